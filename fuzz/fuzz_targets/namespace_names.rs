//! Namespaces and the reversible encoding of names into AWS names: parsing never panics, AWS
//! names read back from the cloud (untrusted) never panic, encoding round-trips to the same
//! absolute name, two names never share an AWS name, and agent queue names are valid SQS names.
#![no_main]

use cgcloud_core::Namespace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str, &str)| {
    let (ns_text, name, other, aws) = input;
    let _ = Namespace::check(ns_text);
    let _ = Namespace::decode_aws_name(aws);
    let _ = cgcloud_core::namespace::user_to_component(name);
    let Ok(ns) = Namespace::parse(ns_text) else { return };
    let _ = ns.from_aws_name(aws);
    let _ = ns.owns_aws_name(aws);
    for q in [ns.agent_queue_name("i-0123456789abcdef0"), ns.agent_queue_prefix()] {
        assert!(q.len() <= 80, "queue name too long: {q}");
        assert!(q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "bad queue name {q}");
    }
    assert!(ns.iam_path().starts_with("/cgcloud/") && ns.iam_path().ends_with('/'));
    let Ok(encoded) = ns.to_aws_name(name) else { return };
    let abs = ns.absolute_name(name).expect("a name that encodes is valid");
    assert_eq!(Namespace::decode_aws_name(&encoded).expect("decodes"), abs, "{name} in {ns}");
    let back = ns.from_aws_name(&encoded).expect("decodes");
    assert_eq!(ns.absolute_name(&back).expect("valid"), abs, "{name} in {ns} came back as {back}");
    if let Ok(encoded_other) = ns.to_aws_name(other) {
        if encoded_other == encoded {
            assert_eq!(ns.absolute_name(other).expect("valid"), abs, "'{name}' and '{other}' share {encoded}");
        }
    }
});
