#!/bin/sh
# Run by .ci/numa inside a multi-node guest (busybox sh): a real program from Debian's
# packages (sqlite3) under `pagemig run` while `pagemig ctl` moves its memory between
# node 0 and node LAST the whole time. Each must print the same and exit the same as its plain run,
# and pages must have moved. Usage: sh ./numa-guest-programs.sh LAST
set -u
last=$1
rc=0
export PAGEMIG_PRELOAD=./libpagemig_preload.so

# Moves the memory of process $1 back and forth until it exits; appends the moves' output
# to $2.
mover() {
    to=$last
    while kill -0 "$1" 2>/dev/null; do
        ./pagemig ctl "$1" move --to "$to" >>"$2" 2>/dev/null && {
            if [ "$to" -eq 0 ]; then to=$last; else to=0; fi
        }
        sleep 1
    done
}

moved() {
    grep -Eo 'migrated [0-9]+ pages' "$1" | awk '{ s += $2 } END { print s + 0 }'
}

# sqlite3: build, index, update and check a database; the same answers.
cat >/tmp/t.sql <<'SQL'
PRAGMA cache_size = -16384;
PRAGMA mmap_size = 0;
PRAGMA temp_store = memory;
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, w INTEGER);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 40000)
INSERT INTO t SELECT x, printf('%08d-%s', x, substr('abcdefghijklmnopqrstuvwxyz', 1 + x % 26)), (x * 7919) % 100003 FROM c;
CREATE INDEX tw ON t(w);
CREATE INDEX tv ON t(v);
SELECT count(*), sum(w), total(length(v)) FROM t;
UPDATE t SET w = w + 1 WHERE id % 3 = 0;
DELETE FROM t WHERE id % 11 = 0;
SELECT count(*), sum(w) FROM t;
PRAGMA integrity_check;
SQL
./sqlite3 /tmp/plain.db </tmp/t.sql >/tmp/sqlite-plain.out 2>&1
plain_rc=$?
./pagemig run --quiet --threshold 64K -- ./sqlite3 /tmp/tiered.db </tmp/t.sql >/tmp/sqlite-tiered.out 2>&1 &
p=$!
: >/tmp/sqlite-moves.txt
mover "$p" /tmp/sqlite-moves.txt &
m=$!
wait "$p"
tiered_rc=$?
wait "$m"
echo "sqlite3: exit $plain_rc plainly, $tiered_rc tiered; $(moved /tmp/sqlite-moves.txt) pages migrated"
[ "$plain_rc" -eq 0 ] && [ "$tiered_rc" -eq "$plain_rc" ] || { echo "sqlite3: exit status differs"; rc=1; }
cmp /tmp/sqlite-plain.out /tmp/sqlite-tiered.out || { echo "sqlite3: output differs"; cat /tmp/sqlite-tiered.out; rc=1; }
tail -n 1 /tmp/sqlite-tiered.out | grep -qx ok || { echo "sqlite3: integrity check"; rc=1; }
[ "$(moved /tmp/sqlite-moves.txt)" -gt 0 ] || { echo "sqlite3: no page moved"; rc=1; }

exit $rc
