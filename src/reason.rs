//! Why a session ended: the revocation reasons of docs/API.md §5.5, one list. The logout event,
//! the revocation feed, the metrics and the audit log all speak these strings; the database
//! stores them as text (and other instances read them back), so [`Reason::parse`] is how text
//! becomes a reason again.

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// A revocation reason (docs/API.md §5.5).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)+
        }

        impl Reason {
            /// Every reason, in the order of docs/API.md §5.5.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];

            /// The reason as the API writes it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)+
                }
            }

            /// The reason a stored or received string names, if any.
            pub fn parse(s: &str) -> Option<Reason> {
                match s {
                    $($name => Some(Reason::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// The user logged out of this session.
    Logout => "logout",
    /// The user logged out of every session.
    LogoutAll => "logout_all",
    /// The user logged out of every other session.
    LogoutOthers => "logout_others",
    /// The user ended one of their other sessions.
    SessionRevoked => "session_revoked",
    /// The password was changed (every other session ends).
    PasswordChanged => "password_changed",
    /// An admin logged the user (or everyone) out.
    AdminLogout => "admin_logout",
    /// An admin ended this session, or took the admin role away (RT14).
    AdminRevoked => "admin_revoked",
    /// A rotated-out refresh token was presented again: theft assumed.
    RefreshTokenReused => "refresh_token_reused",
    /// The session reached its idle or absolute expiry.
    SessionExpired => "session_expired",
    /// An admin disabled the account.
    AccountDisabled => "account_disabled",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_reason_reads_back_as_itself() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
        assert_eq!(Reason::ALL.len(), 10);
        assert_eq!(Reason::parse("other"), None);
    }
}
