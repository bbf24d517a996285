-- recaudit 75b1b4d: the last schema before revisions were recorded (no alembic_version)
CREATE TABLE alert_deliveries (
	alert_id VARCHAR(32) NOT NULL,
	webhook TEXT NOT NULL,
	status VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	next_attempt_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	delivered_at TIMESTAMP WITHOUT TIME ZONE,
	last_error TEXT,
	PRIMARY KEY (alert_id, webhook)
);
CREATE TABLE alerts (
	id VARCHAR(32) NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	run_id INTEGER NOT NULL,
	condition TEXT NOT NULL,
	status VARCHAR(16) NOT NULL,
	severity VARCHAR(16) NOT NULL,
	payload TEXT NOT NULL,
	PRIMARY KEY (id)
);
CREATE TABLE audit_results (
	run_id INTEGER NOT NULL,
	audit VARCHAR(32) NOT NULL,
	status VARCHAR(24) NOT NULL,
	error TEXT,
	seconds FLOAT NOT NULL,
	PRIMARY KEY (run_id, audit)
);
INSERT INTO audit_results (run_id, audit, status, error, seconds) VALUES (1, 'online', 'findings', NULL, 0.5);
CREATE TABLE audit_runs (
	id SERIAL NOT NULL,
	started_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	finished_at TIMESTAMP WITHOUT TIME ZONE,
	since TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	until TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	audits TEXT NOT NULL,
	status VARCHAR(16) NOT NULL,
	path TEXT,
	results TEXT,
	error TEXT,
	PRIMARY KEY (id)
);
INSERT INTO audit_runs (id, started_at, finished_at, since, until, audits, status, path, results, error) VALUES (1, '2026-12-02 00:42:15.975067', '2026-12-02 00:42:15.977838', '2024-01-01 00:00:00', '2024-01-02 00:00:00', 'online', 'findings', '/tmp/tmp5hue7lzo/out', '{"status": "findings", "audits": {"online": {"status": "findings", "error": null, "seconds": 0.5, "metrics": {"online.success_rate": 0.25}, "findings": [{"audit": "online", "key": "online.success_rate", "kind": "threshold", "severity": "warning", "message": "success rate 0.25 below 0.5", "value": 0.25, "threshold": 0.5, "fingerprint": "0123456789abcdef0123456789abcdef"}]}}}', NULL);
SELECT setval(pg_get_serial_sequence('audit_runs', 'id'), coalesce((SELECT max(id) FROM audit_runs), 0) + 1, false);
CREATE TABLE findings (
	id SERIAL NOT NULL,
	run_id INTEGER NOT NULL,
	audit VARCHAR(32) NOT NULL,
	key TEXT NOT NULL,
	kind TEXT NOT NULL,
	severity VARCHAR(16) NOT NULL,
	message TEXT NOT NULL,
	value FLOAT,
	threshold FLOAT,
	fingerprint VARCHAR(32) NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX findings_run ON findings (run_id);
INSERT INTO findings (id, run_id, audit, key, kind, severity, message, value, threshold, fingerprint) VALUES (1, 1, 'online', 'online.success_rate', 'threshold', 'warning', 'success rate 0.25 below 0.5', 0.25, 0.5, '0123456789abcdef0123456789abcdef');
SELECT setval(pg_get_serial_sequence('findings', 'id'), coalesce((SELECT max(id) FROM findings), 0) + 1, false);
CREATE TABLE ingested_sources (
	id SERIAL NOT NULL,
	kind VARCHAR(16) NOT NULL,
	name TEXT NOT NULL,
	fingerprint VARCHAR(64) NOT NULL,
	continues VARCHAR(64),
	partial_from BIGINT,
	start_offset BIGINT NOT NULL,
	end_offset BIGINT NOT NULL,
	first_line BIGINT NOT NULL,
	last_line BIGINT NOT NULL,
	lines BIGINT NOT NULL,
	stored TEXT NOT NULL,
	quarantined BIGINT NOT NULL,
	ingested_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (fingerprint)
);
INSERT INTO ingested_sources (id, kind, name, fingerprint, continues, partial_from, start_offset, end_offset, first_line, last_line, lines, stored, quarantined, ingested_at) VALUES (1, 'events', '/tmp/tmp5hue7lzo/events.log', '3c0ebcb8a974a92a072f3a6a88040978ea6991283705d03f0a6347560fab429a', NULL, NULL, 0, 266, 1, 5, 5, '{"watch": 2, "rate": 1, "recommend": 1, "items": 2}', 1, '2026-12-02 00:42:15.846469');
SELECT setval(pg_get_serial_sequence('ingested_sources', 'id'), coalesce((SELECT max(id) FROM ingested_sources), 0) + 1, false);
CREATE TABLE job_runs (
	id SERIAL NOT NULL,
	job VARCHAR(32) NOT NULL,
	started_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	finished_at TIMESTAMP WITHOUT TIME ZONE,
	status VARCHAR(16) NOT NULL,
	detail TEXT,
	PRIMARY KEY (id)
);
INSERT INTO job_runs (id, job, started_at, finished_at, status, detail) VALUES (1, 'ingest', '2026-12-02 00:42:15.978670', '2026-12-02 00:42:15.984290', 'ok', '1 source');
SELECT setval(pg_get_serial_sequence('job_runs', 'id'), coalesce((SELECT max(id) FROM job_runs), 0) + 1, false);
CREATE TABLE metrics (
	run_id INTEGER NOT NULL,
	key TEXT NOT NULL,
	value FLOAT,
	PRIMARY KEY (run_id, key)
);
INSERT INTO metrics (run_id, key, value) VALUES (1, 'online.success_rate', 0.25);
CREATE TABLE models (
	id TEXT NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	algo TEXT NOT NULL,
	path TEXT NOT NULL,
	cutoff TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	train_ratings BIGINT NOT NULL,
	data_sha256 VARCHAR(64) NOT NULL,
	rmse FLOAT,
	mae FLOAT,
	metadata TEXT NOT NULL,
	PRIMARY KEY (id)
);
CREATE TABLE movie_keys (
	key INTEGER NOT NULL,
	movie_id TEXT NOT NULL,
	PRIMARY KEY (key),
	UNIQUE (movie_id)
);
INSERT INTO movie_keys (key, movie_id) VALUES (1, 'a+2001');
INSERT INTO movie_keys (key, movie_id) VALUES (2, 'b+2002');
CREATE TABLE movies (
	movie_key INTEGER NOT NULL,
	title TEXT,
	year INTEGER,
	genres TEXT,
	source_id INTEGER NOT NULL,
	PRIMARY KEY (movie_key)
);
CREATE TABLE open_conditions (
	condition TEXT NOT NULL,
	alert_id VARCHAR(32) NOT NULL,
	opened_run_id INTEGER NOT NULL,
	PRIMARY KEY (condition)
);
CREATE TABLE quarantine (
	id SERIAL NOT NULL,
	source_id INTEGER NOT NULL,
	file TEXT NOT NULL,
	line BIGINT NOT NULL,
	raw TEXT NOT NULL,
	reason TEXT NOT NULL,
	near_time TIMESTAMP WITHOUT TIME ZONE,
	PRIMARY KEY (id)
);
CREATE INDEX quarantine_near_time ON quarantine (near_time);
INSERT INTO quarantine (id, source_id, file, line, raw, reason, near_time) VALUES (1, 1, '/tmp/tmp5hue7lzo/events.log', 5, '2024-01-01T00:30:00,3,GET /nonsense', 'unknown request', '2024-01-01 00:20:00');
SELECT setval(pg_get_serial_sequence('quarantine', 'id'), coalesce((SELECT max(id) FROM quarantine), 0) + 1, false);
CREATE TABLE ratings (
	source_id INTEGER NOT NULL,
	line BIGINT NOT NULL,
	time TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	user_id BIGINT NOT NULL,
	movie_key INTEGER NOT NULL,
	rating SMALLINT NOT NULL
);
CREATE INDEX ratings_time ON ratings (time);
INSERT INTO ratings (source_id, line, time, user_id, movie_key, rating) VALUES (1, 3, '2024-01-01 00:10:00', 2, 1, 4);
CREATE TABLE recommendation_items (
	source_id INTEGER NOT NULL,
	line BIGINT NOT NULL,
	rank SMALLINT NOT NULL,
	movie_key INTEGER NOT NULL,
	PRIMARY KEY (source_id, line, rank)
);
INSERT INTO recommendation_items (source_id, line, rank, movie_key) VALUES (1, 4, 1, 1);
INSERT INTO recommendation_items (source_id, line, rank, movie_key) VALUES (1, 4, 2, 2);
CREATE TABLE recommendations (
	source_id INTEGER NOT NULL,
	line BIGINT NOT NULL,
	time TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	user_id BIGINT NOT NULL,
	server TEXT NOT NULL,
	status INTEGER NOT NULL,
	latency_ms INTEGER NOT NULL,
	n_items INTEGER NOT NULL,
	error TEXT,
	PRIMARY KEY (source_id, line)
);
CREATE INDEX recommendations_time ON recommendations (time);
INSERT INTO recommendations (source_id, line, time, user_id, server, status, latency_ms, n_items, error) VALUES (1, 4, '2024-01-01 00:20:00', 2, 's:8082', 200, 12, 2, NULL);
CREATE TABLE scheduler_lease (
	name VARCHAR(64) NOT NULL,
	holder VARCHAR(255) NOT NULL,
	expires_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	PRIMARY KEY (name)
);
CREATE TABLE users (
	user_id BIGINT NOT NULL,
	age INTEGER,
	age_group TEXT,
	gender TEXT,
	occupation TEXT,
	source_id INTEGER NOT NULL,
	PRIMARY KEY (user_id)
);
CREATE TABLE watch_hours (
	user_id BIGINT NOT NULL,
	hour INTEGER NOT NULL,
	movie_key INTEGER NOT NULL,
	minutes INTEGER NOT NULL,
	PRIMARY KEY (user_id, hour, movie_key)
);
CREATE INDEX watch_hours_hour ON watch_hours (hour);
INSERT INTO watch_hours (user_id, hour, movie_key, minutes) VALUES (1, 473352, 1, 2);
CREATE TABLE watch_spans (
	user_id BIGINT NOT NULL,
	quarter INTEGER NOT NULL,
	movie_key INTEGER NOT NULL,
	first_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	last_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	PRIMARY KEY (user_id, quarter, movie_key)
);
CREATE INDEX watch_spans_quarter ON watch_spans (quarter);
INSERT INTO watch_spans (user_id, quarter, movie_key, first_at, last_at) VALUES (1, 1893408, 1, '2024-01-01 00:00:00', '2024-01-01 00:00:01');
CREATE TABLE watches (
	source_id INTEGER NOT NULL,
	line BIGINT NOT NULL,
	time TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	user_id BIGINT NOT NULL,
	movie_key INTEGER NOT NULL,
	minute INTEGER NOT NULL
);
CREATE INDEX watches_time ON watches (time);
INSERT INTO watches (source_id, line, time, user_id, movie_key, minute) VALUES (1, 1, '2024-01-01 00:00:00', 1, 1, 0);
INSERT INTO watches (source_id, line, time, user_id, movie_key, minute) VALUES (1, 2, '2024-01-01 00:00:01', 1, 1, 1);
