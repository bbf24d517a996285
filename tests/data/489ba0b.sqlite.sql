BEGIN TRANSACTION;
CREATE TABLE alert_deliveries (
	alert_id VARCHAR(32) NOT NULL, 
	webhook VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at BIGINT NOT NULL, 
	delivered_at BIGINT, 
	last_error TEXT, 
	PRIMARY KEY (alert_id, webhook)
);
CREATE TABLE alerts (
	id VARCHAR(32) NOT NULL, 
	created_at BIGINT NOT NULL, 
	run_id INTEGER NOT NULL, 
	condition VARCHAR(255) NOT NULL, 
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
INSERT INTO "audit_results" VALUES(1,'online','findings',NULL,0.5);
CREATE TABLE audit_runs (
	id INTEGER NOT NULL, 
	started_at BIGINT NOT NULL, 
	finished_at BIGINT, 
	since BIGINT NOT NULL, 
	until BIGINT NOT NULL, 
	audits TEXT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	path TEXT, 
	results TEXT, 
	PRIMARY KEY (id)
);
INSERT INTO "audit_runs" VALUES(1,1796172132818893,1796172132828284,1704067200000000,1704153600000000,'online','findings','/tmp/tmpjf2hals4/out','{"status": "findings", "audits": {"online": {"status": "findings", "error": null, "seconds": 0.5, "metrics": {"online.success_rate": 0.25}, "findings": [{"audit": "online", "key": "online.success_rate", "kind": "threshold", "severity": "warning", "message": "success rate 0.25 below 0.5", "value": 0.25, "threshold": 0.5, "fingerprint": "0123456789abcdef0123456789abcdef"}]}}}');
CREATE TABLE findings (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	audit VARCHAR(32) NOT NULL, 
	"key" VARCHAR(255) NOT NULL, 
	kind VARCHAR(64) NOT NULL, 
	severity VARCHAR(16) NOT NULL, 
	message TEXT NOT NULL, 
	value FLOAT, 
	threshold FLOAT, 
	fingerprint VARCHAR(32) NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "findings" VALUES(1,1,'online','online.success_rate','threshold','warning','success rate 0.25 below 0.5',0.25,0.5,'0123456789abcdef0123456789abcdef');
CREATE TABLE ingested_sources (
	id INTEGER NOT NULL, 
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
	ingested_at BIGINT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (fingerprint), 
	UNIQUE (continues)
);
INSERT INTO "ingested_sources" VALUES(1,'events','/tmp/tmpjf2hals4/events.log','3c0ebcb8a974a92a072f3a6a88040978ea6991283705d03f0a6347560fab429a',NULL,NULL,0,266,1,5,5,'{"watch": 2, "rate": 1, "recommend": 1, "items": 2}',1,1796172132628837);
CREATE TABLE job_runs (
	id INTEGER NOT NULL, 
	job VARCHAR(32) NOT NULL, 
	started_at BIGINT NOT NULL, 
	finished_at BIGINT, 
	status VARCHAR(16) NOT NULL, 
	detail TEXT, 
	PRIMARY KEY (id)
);
INSERT INTO "job_runs" VALUES(1,'ingest',1796172132829454,1796172132849782,'ok','1 source');
CREATE TABLE metrics (
	run_id INTEGER NOT NULL, 
	"key" VARCHAR(255) NOT NULL, 
	value FLOAT, 
	PRIMARY KEY (run_id, "key")
);
INSERT INTO "metrics" VALUES(1,'online.success_rate',0.25);
CREATE TABLE models (
	id VARCHAR(80) NOT NULL, 
	created_at BIGINT NOT NULL, 
	algo VARCHAR(32) NOT NULL, 
	path TEXT NOT NULL, 
	cutoff BIGINT NOT NULL, 
	train_ratings BIGINT NOT NULL, 
	data_sha256 VARCHAR(64) NOT NULL, 
	rmse FLOAT, 
	mae FLOAT, 
	metadata TEXT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE movie_keys (
	"key" INTEGER NOT NULL, 
	movie_id TEXT NOT NULL, 
	PRIMARY KEY ("key"), 
	UNIQUE (movie_id)
);
INSERT INTO "movie_keys" VALUES(1,'a+2001');
INSERT INTO "movie_keys" VALUES(2,'b+2002');
CREATE TABLE movies (
	movie_key INTEGER NOT NULL, 
	title TEXT, 
	year INTEGER, 
	genres TEXT, 
	source_id INTEGER NOT NULL, 
	PRIMARY KEY (movie_key)
);
CREATE TABLE open_conditions (
	condition VARCHAR(255) NOT NULL, 
	alert_id VARCHAR(32) NOT NULL, 
	opened_run_id INTEGER NOT NULL, 
	PRIMARY KEY (condition)
);
CREATE TABLE quarantine (
	id INTEGER NOT NULL, 
	source_id INTEGER NOT NULL, 
	file TEXT NOT NULL, 
	line BIGINT NOT NULL, 
	raw TEXT NOT NULL, 
	reason TEXT NOT NULL, 
	near_time BIGINT, 
	PRIMARY KEY (id)
);
INSERT INTO "quarantine" VALUES(1,1,'/tmp/tmpjf2hals4/events.log',5,'2024-01-01T00:30:00,3,GET /nonsense','unknown request',1704068400000000);
CREATE TABLE ratings (
	source_id INTEGER NOT NULL, 
	line BIGINT NOT NULL, 
	time BIGINT NOT NULL, 
	user_id BIGINT NOT NULL, 
	movie_key INTEGER NOT NULL, 
	rating SMALLINT NOT NULL
);
INSERT INTO "ratings" VALUES(1,3,1704067800000000,2,1,4);
CREATE TABLE recommendation_items (
	source_id INTEGER NOT NULL, 
	line BIGINT NOT NULL, 
	rank SMALLINT NOT NULL, 
	movie_key INTEGER NOT NULL, 
	PRIMARY KEY (source_id, line, rank)
);
INSERT INTO "recommendation_items" VALUES(1,4,1,1);
INSERT INTO "recommendation_items" VALUES(1,4,2,2);
CREATE TABLE recommendations (
	source_id INTEGER NOT NULL, 
	line BIGINT NOT NULL, 
	time BIGINT NOT NULL, 
	user_id BIGINT NOT NULL, 
	server TEXT NOT NULL, 
	status INTEGER NOT NULL, 
	latency_ms INTEGER NOT NULL, 
	n_items INTEGER NOT NULL, 
	error TEXT, 
	PRIMARY KEY (source_id, line)
);
INSERT INTO "recommendations" VALUES(1,4,1704068400000000,2,'s:8082',200,12,2,NULL);
CREATE TABLE users (
	user_id BIGINT NOT NULL, 
	age INTEGER, 
	age_group VARCHAR(32), 
	gender VARCHAR(16), 
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
INSERT INTO "watch_hours" VALUES(1,473352,1,2);
CREATE TABLE watch_spans (
	user_id BIGINT NOT NULL, 
	quarter INTEGER NOT NULL, 
	movie_key INTEGER NOT NULL, 
	first_at BIGINT NOT NULL, 
	last_at BIGINT NOT NULL, 
	PRIMARY KEY (user_id, quarter, movie_key)
);
INSERT INTO "watch_spans" VALUES(1,1893408,1,1704067200000000,1704067201000000);
CREATE TABLE watches (
	source_id INTEGER NOT NULL, 
	line BIGINT NOT NULL, 
	time BIGINT NOT NULL, 
	user_id BIGINT NOT NULL, 
	movie_key INTEGER NOT NULL, 
	minute INTEGER NOT NULL
);
INSERT INTO "watches" VALUES(1,1,1704067200000000,1,1,0);
INSERT INTO "watches" VALUES(1,2,1704067201000000,1,1,1);
CREATE INDEX watch_hours_hour ON watch_hours (hour);
CREATE INDEX watch_spans_quarter ON watch_spans (quarter);
CREATE INDEX watches_time ON watches (time);
CREATE INDEX ratings_time ON ratings (time);
CREATE INDEX recommendations_time ON recommendations (time);
CREATE INDEX quarantine_near_time ON quarantine (near_time);
CREATE INDEX findings_run ON findings (run_id);
COMMIT;
