#!/bin/sh
# Run by .ci/numa inside a multi-node guest (busybox sh): real programs from Debian's
# packages under `pagemig run` while `pagemig ctl` moves their memory between node 0 and
# node LAST the whole time: a database (sqlite3) with its integrity check, an interpreter
# (python3, its standard library from ./py/lib/python311.zip) computing checksums over
# large arrays, a key-value server (redis-server) under its own benchmark client, and a
# memory stressor (stress-ng) whose forked workers verify their own data. Each must print
# the same and exit the same as its plain run (redis: the same data-set digest), and pages
# must have moved; after the last move the kernel's numa_maps must show the program's
# regions on the node that move asked for. Sized for an emulated guest.
# Usage: sh ./numa-guest-programs.sh LAST
set -u
last=$1
rc=0
export PAGEMIG_PRELOAD=./libpagemig_preload.so

# mover PID LOG: moves the regions of process PID, and of every other process under
# pagemig run (its forked children have sockets of their own), back and forth between node
# 0 and the last node, once a second, until PID exits or LOG.stop exists (the move in
# flight then finishes first); appends the moves' output to LOG. While no move migrates
# a page (no region made yet, so no socket, or the regions are on that node already) it
# looks again every 0.1 s: a short program must not end before its first move.
mover() {
    to=$last
    rm -f "$2.stop"
    while kill -0 "$1" 2>/dev/null && [ ! -e "$2.stop" ]; do
        asked=0
        did=0
        for s in /tmp/pagemig-0/run-*.sock; do
            [ -S "$s" ] || continue
            q=${s##*/run-}
            q=${q%.sock}
            o=$(./pagemig ctl "$q" move --to "$to" 2>/dev/null) || continue
            echo "$o" >>"$2"
            asked=1
            case $o in *"migrated 0 pages"*) ;; *) did=1 ;; esac
        done
        if [ "$asked" -eq 1 ]; then
            if [ "$to" -eq 0 ]; then to=$last; else to=0; fi
        fi
        if [ "$did" -eq 1 ]; then sleep 1; else sleep 0.1; fi
    done
}

# compare NAME PLAIN TIERED [INPUT [OUTPUT]]: runs the command line PLAIN, then
# `pagemig run --quiet TIERED` while the mover moves it, both with stdin from INPUT
# (/dev/null); each must exit 0, and (OUTPUT yes, the default) print the same. Leaves the
# outputs in /tmp/NAME-plain.out and /tmp/NAME-tiered.out; sets rc=1 on a difference.
compare() {
    name=$1
    input=${4:-/dev/null}
    eval "$2" <"$input" >"/tmp/$name-plain.out" 2>&1
    plain_rc=$?
    eval "exec ./pagemig run --quiet $3" <"$input" >"/tmp/$name-tiered.out" 2>&1 &
    p=$!
    : >"/tmp/$name-moves.txt"
    mover "$p" "/tmp/$name-moves.txt" &
    m=$!
    wait "$p"
    tiered_rc=$?
    wait "$m"
    echo "$name: exit $plain_rc plainly, $tiered_rc tiered; $(moved "/tmp/$name-moves.txt") pages migrated"
    [ "$plain_rc" -eq 0 ] && [ "$tiered_rc" -eq "$plain_rc" ] || { echo "$name: exit status differs"; cat "/tmp/$name-tiered.out"; rc=1; }
    if [ "${5:-yes}" = yes ]; then
        cmp "/tmp/$name-plain.out" "/tmp/$name-tiered.out" || { echo "$name: output differs"; cat "/tmp/$name-plain.out" "/tmp/$name-tiered.out"; rc=1; }
    fi
    [ "$(moved "/tmp/$name-moves.txt")" -gt 0 ] || { echo "$name: no page moved"; rc=1; }
}

# The nodes of process $1's tiered regions, as the kernel's numa_maps gives them: one line
# per region, "START N0=.. N1=..".
kernel_nodes() {
    ./pagemig ctl "$1" stat --json /tmp/kn.json >/dev/null 2>&1 || return 1
    for start in $(grep -o '"start": [0-9]*' /tmp/kn.json | grep -o '[0-9]*$'); do
        hex=$(printf '%x' "$start")
        grep "^$hex " "/proc/$1/numa_maps" | tr ' ' '\n' | grep '^N[0-9]*=' | tr '\n' ' '
        echo
    done
}

# Moves process $1's memory to node $2 and checks with numa_maps that the kernel has every
# page of its regions there; $3 names the program.
check_placement() {
    ./pagemig ctl "$1" move --to "$2" >/dev/null || { echo "$3: move --to $2 failed"; return 1; }
    kernel_nodes "$1" >/tmp/kn.txt || { echo "$3: no stat"; return 1; }
    [ -s /tmp/kn.txt ] || { echo "$3: no region"; return 1; }
    echo "$3: after move --to $2 the kernel has its regions on: $(sort /tmp/kn.txt | uniq -c | tr '\n' ';')"
    if grep -Eq "(^| )N[0-9]+=" /tmp/kn.txt && ! grep -Ev "^( *N$2=[0-9]+ *)?$" /tmp/kn.txt >/dev/null; then
        return 0
    fi
    echo "$3: a region has pages off node $2"
    return 1
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
# The page cache in one allocation of 16 MiB (-pagecache SIZE N), a region for the whole run.
compare sqlite3 "./sqlite3 -pagecache 4200 4000 /tmp/plain.db" "--threshold 64K -- ./sqlite3 -pagecache 4200 4000 /tmp/tiered.db" /tmp/t.sql
tail -n 1 /tmp/sqlite3-tiered.out | grep -qx ok || { echo "sqlite3: integrity check"; rc=1; }

# python3: checksums over a large bytearray and a large list, the same answers.
cat >/tmp/t.py <<'PY'
import hashlib, random
rng = random.Random(12345)
b = bytearray(rng.randbytes(12 << 20))
lst = list(range(400_000))
h = hashlib.sha256()
for p in range(8):
    h.update(b)
    d = h.digest()
    off = (p * 7919 * 4096) % (len(b) - 4096)
    b[off:off + 4096] = d * 128
    lst[p * 1000] = int.from_bytes(d[:8], "little")
print(h.hexdigest())
print(sum(x * x for x in lst) % 1_000_000_007)
print(sum(b[::4096]))
PY
export PYTHONHOME=/job/py
compare python3 "./py/bin/python3 /tmp/t.py" "-- ./py/bin/python3 /tmp/t.py"
unset PYTHONHOME

# redis-server under redis-benchmark: the data set's digest before and after, plain and
# tiered, all four the same.
ip link set lo up 2>/dev/null
load="for i = 1, 20000 do redis.call('SET', 'data:' .. i, string.rep(string.char(97 + i % 26), 200 + i % 300)) end for i = 1, 100 do for j = 1, 100 do redis.call('RPUSH', 'list:' .. i, i * j) end end return 1"
redis_session() { # $1: plain or tiered; prints "DIGEST-BEFORE DIGEST-AFTER BENCH-RC"
    port=$2
    if [ "$1" = plain ]; then
        ./redis-server --port "$port" --save "" --appendonly no --enable-debug-command yes >/tmp/redis-$1.log 2>&1 &
    else
        ./pagemig run --quiet -- ./redis-server --port "$port" --save "" --appendonly no --enable-debug-command yes >/tmp/redis-$1.log 2>&1 &
    fi
    srv=$!
    i=0
    until ./redis-cli -p "$port" ping >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 120 ] || { echo "- - 1"; return; }; sleep 1
    done
    if [ "$1" = tiered ]; then
        : >/tmp/redis-moves.txt
        mover "$srv" /tmp/redis-moves.txt &
        mv_pid=$!
    fi
    ./redis-cli -p "$port" EVAL "$load" 0 >/dev/null
    d1=$(./redis-cli -p "$port" DEBUG DIGEST)
    ./redis-benchmark -p "$port" -q -n 20000 -c 8 -P 8 -t get,lrange_100 >/dev/null 2>&1
    b1=$?
    ./redis-benchmark -p "$port" -q -n 20000 -c 8 -r 20000 -d 512 -t set,lpush >/dev/null 2>&1
    b2=$?
    ./redis-cli -p "$port" DEL key:__rand_int__ mylist counter:__rand_int__ >/dev/null
    ./redis-cli -p "$port" EVAL "for _, k in ipairs(redis.call('KEYS', 'key:*')) do redis.call('DEL', k) end return 1" 0 >/dev/null
    d2=$(./redis-cli -p "$port" DEBUG DIGEST)
    if [ "$1" = tiered ]; then
        # The mover stops first: a move of its own to node 0 must not race the check.
        touch /tmp/redis-moves.txt.stop
        wait "$mv_pid"
        check_placement "$srv" "$last" redis-server >&2 || b1=1
    fi
    ./redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1
    wait "$srv"
    echo "$d1 $d2 $((b1 + b2))"
}
plain=$(redis_session plain 6390)
tiered=$(redis_session tiered 6391)
echo "redis: plain digests and benchmark status: $plain; tiered: $tiered; $(moved /tmp/redis-moves.txt) pages migrated"
set -- $plain $tiered
[ "$3" = 0 ] && [ "$6" = 0 ] || { echo "redis: a benchmark or the placement check failed"; tail -5 /tmp/redis-tiered.log; rc=1; }
[ "$1" != - ] && [ "$1" = "$2" ] && [ "$4" = "$1" ] && [ "$5" = "$1" ] || { echo "redis: the data set differs"; rc=1; }
[ "$(moved /tmp/redis-moves.txt)" -gt 0 ] || { echo "redis: no page moved"; rc=1; }

# stress-ng: two forked vm workers write and verify their own memory while it moves (each
# worker tiers its own memory and has a socket of its own).
sng="./stress-ng --vm 2 --vm-bytes 16M --vm-keep --verify --timeout 12s"
compare stress-ng "$sng" "-- $sng" /dev/null no
grep -q "successful run completed" /tmp/stress-ng-tiered.out && ! grep -q "fail:" /tmp/stress-ng-tiered.out || { echo "stress-ng: its verification"; cat /tmp/stress-ng-tiered.out; rc=1; }

exit $rc
