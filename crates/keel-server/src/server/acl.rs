//! ACL on a connection: the command (see [`crate::acl`]), and the ACL log's two sources, a
//! refused command and a failed login.

use super::*;
use crate::acl::{self, Context, Reason};
use crate::auth::Denied;

impl Conn {
    /// ACL <subcommand> …, as the connection's user.
    pub(super) fn acl(&self, args: &[Bytes]) -> Reply {
        let me = self.user.clone().unwrap_or_else(|| User(String::new()));
        acl::command(&self.sh.users, &self.sh.acl_log, &me, args, now_ms())
    }

    fn acl_context(&self) -> Context {
        match self.multi {
            Some(_) => Context::Multi,
            None => Context::Toplevel,
        }
    }

    /// Logs a command the permission check refused.
    pub(super) fn acl_log_denied(&self, d: &Denied) {
        let info = self.client.line();
        let context = self.acl_context();
        (self.sh.acl_log).record(
            Reason::Command,
            context,
            &d.command,
            &d.user,
            info,
            now_ms(),
        );
    }

    /// Logs a failed AUTH or HELLO … AUTH: never the password, and the user only if configured.
    pub(super) fn acl_log_failed_auth(&self, given_user: &[u8]) {
        let user = acl::logged_user_name(&self.sh.users, given_user);
        let info = self.client.line();
        let context = self.acl_context();
        (self.sh.acl_log).record(Reason::Auth, context, "AUTH", &user, info, now_ms());
    }
}
