CREATE TABLE IF NOT EXISTS notice (
    id SERIAL PRIMARY KEY,
    receiver_id VARCHAR(20) NOT NULL,
    sender_id VARCHAR(20) NOT NULL,
    article_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notice_by_receiver ON notice (receiver_id, id);
