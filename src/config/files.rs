//! The files a configuration names, read with it (at start and at every reload): auth_file's
//! users and auth_hba_file's lines.

use super::{hba, userlist, AuthType, Config, User};

impl Config {
    /// Reads auth_hba_file when auth_type = "hba" asks for it.
    pub(super) fn read_hba_file(&mut self) -> Result<(), String> {
        if self.general.auth_type != AuthType::Hba {
            return Ok(());
        }
        let path = &self.general.auth_hba_file;
        if path.is_empty() {
            return Err("auth_type = \"hba\" needs a file".into());
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let hba = hba::Hba::parse(&text).map_err(|(n, why)| format!("{path}:{n}: {why}"))?;
        self.hba = Some(std::sync::Arc::new(hba));
        Ok(())
    }

    /// Adds the users of `auth_file` (PgBouncer's userlist.txt): a user also in `[users]`
    /// keeps its settings there and takes the file's secret when it has none of its own.
    pub(super) fn read_auth_file(&mut self) -> Result<(), String> {
        let path = &self.general.auth_file;
        if path.is_empty() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let users = userlist::parse(&text).map_err(|(n, why)| format!("{path}:{n}: {why}"))?;
        for (name, secret) in users {
            let user = self.users.entry(name).or_insert(User {
                password: None,
                pool_size: None,
                pool_mode: None,
                max_user_connections: None,
                max_user_client_connections: None,
            });
            user.password.get_or_insert(secret);
        }
        Ok(())
    }
}
