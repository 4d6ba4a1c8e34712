-- The audit trail: one row per message of the events stream <P>_EVENTS.
-- seq is the stream sequence: a redelivered event hits the primary key and is skipped.
CREATE TABLE IF NOT EXISTS events (
    seq        bigint PRIMARY KEY,
    time       timestamptz NOT NULL,
    subject    text NOT NULL,
    entity     text NOT NULL,
    kind       text NOT NULL,
    task_id    text,
    agent_id   text,
    deployment text,
    capability text,
    payload    jsonb
);
CREATE INDEX IF NOT EXISTS events_task_id ON events (task_id, seq) WHERE task_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_agent_time ON events (agent_id, time) WHERE agent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_kind_time ON events (entity, kind, time);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
