//! What the user is told about an error beyond its message: its stable `kind` for
//! `--output json` (docs/json.md lists them) and a suggestion printed under it.

/// The stable `kind` of an error, for `--output json` (docs/json.md lists them): scripts
/// branch on it, not on the message.
pub fn error_kind(err: &anyhow::Error) -> &'static str {
    use cgcloud_aws::AwsError;
    use cgcloud_core::model::SelectError;
    use cgcloud_remote::RemoteError;
    use cgcloud_roles::RoleError;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<AwsError>() {
            return match e {
                AwsError::NoRegion => "no-region",
                AwsError::NoCredentials { .. } | AwsError::BadCredentials { .. } => "credentials",
                AwsError::Unreachable { .. } => "unreachable",
                AwsError::Throttled { .. } => "throttled",
                AwsError::WaitTimeout { .. } => "timeout",
                AwsError::Invalid(_) => "invalid-input",
                AwsError::Service { .. } | AwsError::Other { .. } => "aws",
            };
        }
        if let Some(e) = cause.downcast_ref::<SelectError>() {
            return match e {
                SelectError::Ambiguous { .. } => "ambiguous",
                _ => "not-found",
            };
        }
        if let Some(e) = cause.downcast_ref::<RoleError>() {
            return match e {
                RoleError::UnknownRole { .. } | RoleError::UnknownClusterType { .. } => "not-found",
                RoleError::UnknownOption { .. } | RoleError::BadOptionValue { .. } | RoleError::MalformedOption(_) => {
                    "invalid-input"
                }
                _ => "role",
            };
        }
        if let Some(e) = cause.downcast_ref::<RemoteError>() {
            return match e {
                RemoteError::MissingPrograms { .. } => "missing-program",
                RemoteError::NotReady { .. } => "timeout",
                RemoteError::HostKeyMismatch { .. } => "host-key",
                _ => "ssh",
            };
        }
        if cause.downcast_ref::<cgcloud_core::namespace::NamespaceError>().is_some()
            || cause.downcast_ref::<cgcloud_core::sshkey::KeyError>().is_some()
        {
            return "invalid-input";
        }
        if cause.downcast_ref::<cgcloud_roles::compile::CompileError>().is_some() {
            return "role";
        }
        if cause.downcast_ref::<cgcloud_localcloud::Error>().is_some() {
            return "local-cloud";
        }
    }
    if err.to_string() == "interrupted" {
        return "interrupted";
    }
    "failed"
}

/// A suggestion for the user, from the first error in the chain that has one.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<cgcloud_aws::AwsError>() {
            if let Some(h) = e.hint() {
                return Some(h);
            }
        }
        if cause.downcast_ref::<cgcloud_core::namespace::NamespaceError>().is_some() {
            return Some(
                "a namespace looks like / or /team/ or /team/project/ (lower case); __me__ stands for your user name"
                    .into(),
            );
        }
        if cause.downcast_ref::<cgcloud_core::sshkey::KeyError>().is_some() {
            return Some("create a key with `ssh-keygen -t ed25519` and pass its .pub file".into());
        }
        if let Some(cgcloud_remote::RemoteError::NotReady { .. }) = cause.downcast_ref::<cgcloud_remote::RemoteError>()
        {
            return Some(
                "check that the box is reachable from here (--ssh-address public|private) and that its security group allows SSH from your address".into(),
            );
        }
    }
    None
}
