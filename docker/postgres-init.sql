-- Runs once, when the postgres volume is empty (docker-entrypoint-initdb.d).
-- One database per service; both are owned by POSTGRES_USER, which runs this script.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
