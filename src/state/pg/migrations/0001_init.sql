-- truc's store: one key-value table per tree. Keys order byte-wise (bytea
-- compares as memcmp), like the embedded store's trees. Plain SQL only.
CREATE TABLE truc_agencies (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_keys (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_envelopes (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_by_dest (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_deadlines (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_nonces (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_meta (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_pending (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_presence (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_presence_log (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_audit (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_broker_users (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_last_keys (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE truc_routing (k bytea PRIMARY KEY, v bytea NOT NULL);
