# Helpers for the benchmark scripts (source this file).
#
#   . loadtest/bench-lib.sh
#   free_port                # a free TCP port on 127.0.0.1
#   wait_port PORT           # until something listens on 127.0.0.1:PORT (30 s at most)
#   cpu_ticks PID            # utime+stime of a process, in clock ticks
#   mariadb_start DIR [ARG...] # a PRIVATE MariaDB: own datadir, socket and port under DIR, no
#                            # grant tables (the system server is never touched); sets
#                            # MARIADB_DIR, MARIADB_PORT and MARIADB_PID (the caller kills it).
#                            # ARGs go to mariadbd instead of --skip-log-bin (e.g. a binlog
#                            # and server id for replication). Needs Debian's mariadb-server
#                            # (mariadb-install-db, mariadbd, mariadb).
#   mariadb_sql [ARGS...]    # the mariadb client on that socket, -N -B

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

mariadb_start() { # $1 = working directory (datadir, socket, logs), then mariadbd arguments
    local d=$1 rootarg=() extra=(--skip-log-bin)
    shift
    [[ $# -gt 0 ]] && extra=("$@")
    [ "$(id -u)" = 0 ] && rootarg=(--user=root)
    MARIADB_DIR=$d
    MARIADB_PORT=$(free_port)
    mariadb-install-db --no-defaults --datadir="$d/data" --skip-test-db \
        --auth-root-authentication-method=normal "${rootarg[@]}" >/dev/null
    mariadbd --no-defaults --datadir="$d/data" --socket="$d/sock" --port="$MARIADB_PORT" \
        --bind-address=127.0.0.1 --skip-grant-tables --skip-networking=0 \
        --pid-file="$d/mysqld.pid" --log-error="$d/err.log" --tmpdir="$d" "${extra[@]}" \
        --max-connections=500 "${rootarg[@]}" </dev/null >/dev/null 2>&1 &
    MARIADB_PID=$!
    local _
    for _ in $(seq 1 600); do
        mariadb --socket="$d/sock" -e 'select 1' >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "private mariadbd did not start (see $d/err.log)" >&2
    return 1
}

mariadb_sql() { mariadb --socket="$MARIADB_DIR/sock" -N -B "$@"; }
