-- The parent/child registry kept the child nodes that reported to this agent here. Nodes
-- now live in etcd (<prefix>/nodes/ and <prefix>/seen/), so the table goes.
DROP TABLE IF EXISTS nodes;
