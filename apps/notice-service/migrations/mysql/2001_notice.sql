CREATE TABLE IF NOT EXISTS notice (
    id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    receiver_id VARCHAR(20) NOT NULL,
    sender_id VARCHAR(20) NOT NULL,
    article_id INT NOT NULL,
    INDEX notice_by_receiver (receiver_id, id)
) DEFAULT CHARSET = utf8mb4;
