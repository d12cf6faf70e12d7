//! Who a connection is and what it may run.
//!
//! Today there is one user, `default`, with the optional `requirepass`. ACL users with hashed
//! passwords and read/write/admin permissions slot in here: [`Users::authenticate`] returns the
//! user, and [`Users::permits`] decides per command class.

use crate::cmd::Perm;

pub struct Users {
    requirepass: Option<String>,
}

/// An authenticated user's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User(pub String);

pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
pub const NOAUTH: &str = "NOAUTH Authentication required.";

impl Users {
    pub fn new(requirepass: Option<String>) -> Users {
        Users { requirepass }
    }

    pub fn password_required(&self) -> bool {
        self.requirepass.is_some()
    }

    /// The user a new connection starts as: `default` when no password is needed.
    pub fn initial(&self) -> Option<User> {
        (!self.password_required()).then(|| User("default".into()))
    }

    pub fn authenticate(&self, user: &[u8], password: &[u8]) -> Option<User> {
        if user != b"default" {
            return None;
        }
        match &self.requirepass {
            None => Some(User("default".into())),
            Some(p) => constant_time_eq(p.as_bytes(), password).then(|| User("default".into())),
        }
    }

    pub fn permits(&self, _user: &User, _perm: Perm) -> bool {
        true
    }
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        let u = Users::new(Some("secret".into()));
        assert!(u.initial().is_none());
        assert!(u.authenticate(b"default", b"secret").is_some());
        assert!(u.authenticate(b"default", b"secreT").is_none());
        assert!(u.authenticate(b"default", b"secret1").is_none());
        assert!(u.authenticate(b"default", b"").is_none());
        assert!(u.authenticate(b"other", b"secret").is_none());
        let open = Users::new(None);
        assert!(open.initial().is_some());
    }
}
