//! What a reload may not change: settings bound to sockets and keys already handed out keep
//! their old values until a restart.

use super::Config;

/// The settings only a restart changes (SHOW CONFIG's `changeable` says no to each).
pub const NEEDS_RESTART: [&str; 9] = [
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "unix_socket_mode",
    "unix_socket_group",
    "http_listen",
    "peer_id",
    "so_reuseport",
    "workers",
];

impl Config {
    /// Takes `old`'s values for the settings only a restart may change, and names each that
    /// the new file changed.
    pub fn keep_restart_keys(&mut self, old: &Config) -> Vec<&'static str> {
        let (o, n) = (&old.general, &mut self.general);
        let changed: Vec<&'static str> = [
            o.listen_addr != n.listen_addr,
            o.listen_port != n.listen_port,
            o.unix_socket_dir != n.unix_socket_dir,
            o.unix_socket_mode != n.unix_socket_mode,
            o.unix_socket_group != n.unix_socket_group,
            o.http_listen != n.http_listen,
            o.peer_id != n.peer_id,
            o.so_reuseport != n.so_reuseport,
            o.workers != n.workers,
        ]
        .into_iter()
        .zip(NEEDS_RESTART)
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect();
        n.listen_addr.clone_from(&o.listen_addr);
        n.listen_port = o.listen_port;
        n.unix_socket_dir.clone_from(&o.unix_socket_dir);
        n.unix_socket_mode.clone_from(&o.unix_socket_mode);
        n.unix_socket_group.clone_from(&o.unix_socket_group);
        n.http_listen.clone_from(&o.http_listen);
        n.peer_id = o.peer_id;
        n.so_reuseport = o.so_reuseport;
        n.workers = o.workers;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_listening_address_and_names_it() {
        let old = Config::parse("[databases.app]\n", "old").unwrap();
        let mut new = Config::parse(
            "listen_port = 7000\ndefault_pool_size = 3\n[databases.app]\n",
            "new",
        )
        .unwrap();
        assert_eq!(new.keep_restart_keys(&old), ["listen_port"]);
        assert_eq!(new.general.listen_port, old.general.listen_port);
        assert_eq!(new.general.default_pool_size, 3, "the rest takes effect");
    }

    #[test]
    fn every_restart_key_is_kept_and_named() {
        let old = Config::parse("[databases.app]\n", "old").unwrap();
        let changed = "listen_addr = \"127.0.0.2\"\nlisten_port = 7000\n\
            unix_socket_dir = \"/run\"\nunix_socket_mode = \"0700\"\n\
            unix_socket_group = \"postgres\"\nhttp_listen = \"\"\npeer_id = 3\n\
            so_reuseport = true\nworkers = 2\n[databases.app]\n";
        let mut new = Config::parse(changed, "new").unwrap();
        assert_eq!(new.keep_restart_keys(&old), NEEDS_RESTART);
        assert_eq!(new.general, old.general);
    }
}
