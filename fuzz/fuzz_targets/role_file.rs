//! Role files as plugins give them: any text is either refused with an error or loads; a role
//! that loads resolves (includes, merge) and compiles for each of its OSes with any `-O` values,
//! or says why not — never a panic. A compiled plan survives its JSON form unchanged. The input
//! is the file's text, then optionally a NUL and `-O` assignments separated by NULs, so that
//! the built-in role files are the seed corpus as they are.
#![no_main]

use cgcloud_roles::Registry;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn builtin() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| Registry::builtin().expect("the built-in roles load"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(data) = std::str::from_utf8(data) else { return };
    let mut parts = data.split('\0');
    let text = parts.next().unwrap_or_default();
    let options: Vec<&str> = parts.collect();
    let mut reg = builtin().clone();
    if reg.add_plugin_text("fuzz.toml", text).is_err() {
        return;
    }
    // The plugin's own role (an override of a built-in one included): the others are as built.
    let Some(name) = toml::from_str::<toml::Value>(text).ok().and_then(|v| v.get("name")?.as_str().map(str::to_owned))
    else {
        return;
    };
    {
        let Ok(role) = reg.role(&name) else { return };
        let mut given = BTreeMap::new();
        for o in &options {
            if let Ok((k, v)) = role.parse_option(o) {
                given.insert(k, v);
            }
        }
        for os in &role.os {
            let Ok(plan) = cgcloud_roles::compile::compile(&role, os, &given) else { continue };
            assert!(!plan.hash().is_empty());
            let json = serde_json::to_string(&plan).expect("a plan serializes");
            let back: cgcloud_core::plan::Plan = serde_json::from_str(&json).expect("a plan deserializes");
            assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
        }
    }
});
