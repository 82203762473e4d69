//! `list-roles` and `list-options`.

use crate::context::Ctx;
use anyhow::Result;
use std::process::ExitCode;

pub async fn list_roles(ctx: &Ctx) -> Result<ExitCode> {
    let roles = ctx.registry().await?.list();
    let rows: Vec<Vec<String>> = roles
        .iter()
        .map(|r| {
            let description = match &r.legacy {
                Some(why) => format!("[legacy] {} ({why})", r.description),
                None => r.description.clone(),
            };
            vec![r.name.clone(), r.os.join(","), r.source.clone(), description]
        })
        .collect();
    ctx.out.table(&["ROLE", "OS", "SOURCE", "DESCRIPTION"], &rows, &roles);
    ctx.out.note(
        "hint: add roles from directories listed in CGCLOUD_PLUGINS (colon-separated) or ~/.config/cgcloud/roles",
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn list_options(ctx: &Ctx, role: &str) -> Result<ExitCode> {
    let role = ctx.registry().await?.role(role)?;
    if role.options.is_empty() {
        ctx.out.note(format!("role '{}' has no options", role.name));
    }
    let rows: Vec<Vec<String>> = role
        .options
        .iter()
        .map(|(name, o)| {
            vec![
                name.clone(),
                format!("{:?}", o.option_type).to_lowercase(),
                o.default.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".into()),
                if o.inherited { "yes".into() } else { "no".into() },
                o.help.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() || ctx.out.format == crate::cli::OutputFormat::Json {
        ctx.out.table(&["OPTION", "TYPE", "DEFAULT", "INHERITED", "HELP"], &rows, &role.options);
    }
    Ok(ExitCode::SUCCESS)
}
