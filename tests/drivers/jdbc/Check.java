// PgJDBC through pgsluice (transaction mode, replicas, more clients than servers): the
// default prepareThreshold (server-side statements from the fifth execution) and
// prepareThreshold=1, batch inserts, transactions, and the session state that must follow the
// client (SET, advisory locks, LISTEN/NOTIFY). Exits non-zero on the first wrong answer;
// prints "ok" at the end.

import java.sql.*;
import java.util.*;
import java.util.concurrent.*;

public class Check {
    static String url;
    static Properties props = new Properties();

    static void check(boolean cond, String what) {
        if (!cond) throw new IllegalStateException("jdbc: " + what);
    }

    static Connection connect(String threshold) throws SQLException {
        Properties p = new Properties();
        p.putAll(props);
        if (threshold != null) p.setProperty("prepareThreshold", threshold);
        return DriverManager.getConnection(url, p);
    }

    static void worker(int i, String threshold) throws Exception {
        try (Connection c = connect(threshold)) {
            PreparedStatement read = c.prepareStatement("SELECT ?::int + 1");
            for (int r = 0; r < 25; r++) {
                int key = i * 1000 + r;
                read.setInt(1, key);
                try (ResultSet rs = read.executeQuery()) {
                    check(rs.next() && rs.getInt(1) == key + 1, "read");
                }
            }
            c.setAutoCommit(false);
            PreparedStatement insert = c.prepareStatement("INSERT INTO drv_jdbc (id, v) VALUES (?, ?)");
            for (int n = 0; n < 50; n++) {
                insert.setInt(1, 100000 * (threshold == null ? 1 : 2) + i * 100 + n);
                insert.setString(2, "batch " + n);
                insert.addBatch();
            }
            int[] done = insert.executeBatch();
            check(done.length == 50, "batch");
            PreparedStatement count = c.prepareStatement("SELECT count(*) FROM drv_jdbc WHERE id >= ? AND id < ?");
            int base = 100000 * (threshold == null ? 1 : 2) + i * 100;
            count.setInt(1, base);
            count.setInt(2, base + 50);
            try (ResultSet rs = count.executeQuery()) {
                check(rs.next() && rs.getInt(1) == 50, "own batch in the transaction");
            }
            c.commit();
            c.setAutoCommit(true);
            // Outside the transaction the read may go to a replica, once it has the batch.
            try (ResultSet rs = count.executeQuery()) {
                check(rs.next() && rs.getInt(1) == 50, "own batch after commit");
            }
        }
    }

    static String one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            check(rs.next(), "no row: " + sql);
            return rs.getString(1);
        }
    }

    static void sessionState() throws Exception {
        try (Connection a = connect(null); Connection b = connect(null)) {
            try (Statement s = a.createStatement()) {
                s.execute("SET search_path TO tenant_jdbc, public");
            }
            for (int n = 0; n < 10; n++) {
                check(one(a, "SHOW search_path").equals("tenant_jdbc, public"), "own SET");
                check(one(b, "SHOW search_path").equals("\"$user\", public"), "leaked SET");
            }
            one(a, "SELECT pg_advisory_lock(4545)");
            a.setAutoCommit(false);
            for (int n = 0; n < 5; n++) {
                one(a, "SELECT " + n);
                a.commit();
            }
            a.setAutoCommit(true);
            check(one(b, "SELECT pg_try_advisory_lock(4545)").equals("f"), "lock held");
            check(one(a, "SELECT pg_advisory_unlock(4545)").equals("t"), "unlock");
            try (Statement s = a.createStatement()) {
                s.execute("LISTEN drv_jdbc");
            }
            try (Statement s = b.createStatement()) {
                s.execute("NOTIFY drv_jdbc, 'hello'");
            }
            org.postgresql.PGConnection pg = a.unwrap(org.postgresql.PGConnection.class);
            org.postgresql.PGNotification[] got = pg.getNotifications(5000);
            check(got != null && got.length == 1 && got[0].getParameter().equals("hello"), "notification");
        }
    }

    public static void main(String[] args) throws Exception {
        url = args[0];
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        ExecutorService pool = Executors.newFixedThreadPool(16);
        List<Future<?>> runs = new ArrayList<>();
        for (int i = 0; i < 16; i++) {
            final int n = i;
            final String threshold = i % 2 == 0 ? null : "1";
            runs.add(pool.submit(() -> { worker(n, threshold); return null; }));
        }
        for (Future<?> f : runs) f.get(120, TimeUnit.SECONDS);
        pool.shutdown();
        sessionState();
        System.out.println("ok");
    }
}
