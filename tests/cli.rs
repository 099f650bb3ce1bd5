//! The command line: `pgsluice check` accepts the documented file and refuses bad ones with
//! exit status 2 and a message naming the file and the key.

use std::process::Command;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn documented_config_passes_check() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgsluice.toml");
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configs_exit_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("listen_port = 70000\n[databases.a]\n", "listen_port"),
        (
            "server_lifetime = \"soon\"\n[databases.a]\n",
            "server_lifetime",
        ),
        ("[databases.a]\nport = \"x\"\n", "databases.a.port"),
        (
            "[databases.a]\n[users.u]\npasword = \"x\"\n",
            "users.u.pasword",
        ),
        (
            "listen_addr = \"not an address\"\n[databases.a]\n",
            "listen_addr",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = check(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains("bad.toml") && err.contains(key),
            "{text}: {err}"
        );
    }
    let out = check(&dir.path().join("missing.toml"));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_refuses_a_bad_file_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "pool_mode = \"statement\"\n[databases.a]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool_mode"));
}
