CREATE TABLE IF NOT EXISTS story (
    story_id SERIAL PRIMARY KEY,
    ID VARCHAR(20) NOT NULL,
    message VARCHAR(300) NOT NULL
);
CREATE INDEX IF NOT EXISTS story_by_user ON story (ID, story_id);
