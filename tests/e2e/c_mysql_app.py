"""What tests/e2e/test_c_mysql.py runs through mirror-py: mysqlclient (MySQLdb), whose libmariadb resolves and
connects in C, against the sandbox's MariaDB pod (examples/service/mariadb.yaml) by its Service name, which
only the pod's DNS knows.

``python c_mysql_app.py SCENARIO`` prints one JSON line.
"""

from __future__ import annotations

import json
import sys

LOGIN = {"user": "app", "password": "app-secret", "database": "app", "connect_timeout": 10}


def query_scenario() -> dict:
    """A query, a transaction rolled back and one committed, and who the server thinks the client is."""
    import MySQLdb

    conn = MySQLdb.connect(host="mariadb", port=3306, **LOGIN)
    out: dict = {"host_info": conn.get_host_info()}
    cur = conn.cursor()
    cur.execute("select version(), (select host from information_schema.processlist where id = connection_id())")
    out["version"], client = cur.fetchone()
    out["client_host"] = client.rsplit(":", 1)[0]  # "IP:port": the address the server accepted
    cur.execute("create table if not exists c_mysql_t (n int) engine=InnoDB")
    cur.execute("delete from c_mysql_t")
    conn.commit()
    cur.execute("insert into c_mysql_t values (1), (2)")
    conn.rollback()
    cur.execute("select count(*) from c_mysql_t")
    out["rows_after_rollback"] = cur.fetchone()[0]
    cur.executemany("insert into c_mysql_t values (%s)", [(n,) for n in range(1, 101)])
    conn.commit()
    cur.execute("select sum(n) from c_mysql_t")
    out["sum_after_commit"] = int(cur.fetchone()[0])
    cur.close()
    conn.close()
    return out


def refused_scenario() -> dict:
    """The Service's pod, on a port nothing listens on: libmariadb's own error, with its code."""
    import MySQLdb

    try:
        MySQLdb.connect(host="mariadb", port=3307, **LOGIN)
    except MySQLdb.OperationalError as exc:
        return {"code": exc.args[0], "error": exc.args[1]}
    return {"code": None, "error": None}


def loopback_scenario() -> dict:
    """From the MariaDB pod itself, as its sidecar would: 127.0.0.1 is the pod's loopback, through TCP."""
    import MySQLdb

    conn = MySQLdb.connect(host="127.0.0.1", port=3306, **LOGIN)
    cur = conn.cursor()
    cur.execute("select host from information_schema.processlist where id = connection_id()")
    out = {"host_info": conn.get_host_info(), "client_host": cur.fetchone()[0].rsplit(":", 1)[0]}
    conn.close()
    return out


SCENARIOS = {name[: -len("_scenario")]: fn for name, fn in globals().items() if name.endswith("_scenario")}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
