"""The cost of the count triggers (schema v6) in SQLite alone: 100,000 calls inserted, set
running and set succeeded, 1,000 a transaction, with and without the triggers, on the
engine's own schema (read from engine/src/store/schema.rs). Run from the repository root:
`python3 bench/sql/trigger_cost.py`."""
import re, sqlite3, time, os, sys
src=open('engine/src/store/schema.rs').read()
body=src[src.index('const MIGRATIONS'):src.index('];', src.index('const MIGRATIONS'))]
sqls=re.findall(r'r#"(.*?)"#|"\n(.*?)\n\s*"', body, re.S)
sqls=[a or b for a,b in sqls]
def run(triggers):
    path='target/trig.db'
    for p in [path, path+'-wal', path+'-shm']:
        if os.path.exists(p): os.remove(p)
    c=sqlite3.connect(path, isolation_level=None)
    c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=FULL')
    for s in sqls:
        if not triggers:
            s=re.sub(r'CREATE TRIGGER.*?END;', '', s, flags=re.S)
        c.executescript(s)
    n=100000; t=time.time()
    for b in range(0,n,1000):
        c.execute('BEGIN')
        for i in range(b,b+1000):
            c.execute("INSERT INTO calls (id, subscription, target, ordering_key, payload, status, next_attempt_at, created_at, updated_at, topic, partition, \"offset\") VALUES (?, 'bench', 't', ?, ?, 'pending', 0, 0, 0, 'x', 0, ?)", (str(i), b'k%d'%(i%1000), b'x'*100, i))
        c.execute('COMMIT')
    for st in ['running','succeeded']:
        for b in range(1,n+1,1000):
            c.execute('BEGIN')
            for i in range(b,b+1000):
                c.execute("UPDATE calls SET status=?, updated_at=1 WHERE seq=?", (st,i))
            c.execute('COMMIT')
    return time.time()-t
for _ in range(2):
    print('triggers', round(run(True),2), 'none', round(run(False),2))
