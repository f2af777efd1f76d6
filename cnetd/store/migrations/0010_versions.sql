-- Model versions: every deploy of a name is the next version of that name (1, 2, 3 ...).
-- state: training | ready | failed | retired. Once ready, sha256/size say what the artifact
-- was and `artifact` where the agent keeps its own copy (content-addressed under the state
-- dir, with the sidecar files listed in `files`); serving of the version reads that copy.
CREATE TABLE model_versions (
    model_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    promote TEXT NOT NULL DEFAULT 'auto',
    state TEXT NOT NULL DEFAULT 'training',
    reason TEXT,
    sha256 TEXT,
    size INTEGER,
    artifact TEXT,
    files TEXT,
    source TEXT NOT NULL DEFAULT 'training',
    created_at TEXT NOT NULL,
    ready_at TEXT,
    UNIQUE (name, version)
);
-- Deploys made before versions existed: numbered per name in the order they were made.
INSERT INTO model_versions (model_id, name, version, created_at)
SELECT id, name, ROW_NUMBER() OVER (PARTITION BY name ORDER BY created_at, rowid), created_at FROM models;
-- Per name: the default version, the previous default (kept warm until previous_until) and
-- the canary of a running rollout (JSON), each a deploy id.
CREATE TABLE model_pointers (
    name TEXT PRIMARY KEY,
    default_id TEXT,
    previous_id TEXT,
    previous_until TEXT,
    canary TEXT,
    updated_at TEXT NOT NULL
)
