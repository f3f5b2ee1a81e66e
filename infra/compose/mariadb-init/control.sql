-- The control store (deployed component versions), apart from the shard's
-- own database: both hosts share it. payfn migrates it at start.
CREATE DATABASE IF NOT EXISTS payfn_control;
GRANT ALL PRIVILEGES ON payfn_control.* TO 'payfn'@'%';
