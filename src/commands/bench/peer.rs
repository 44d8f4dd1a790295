//! Another implementation on the bench's workload (`--service-cmd`): started with the
//! service's command line, with the rules the Python peers import put on its `PYTHONPATH`.

use std::path::Path;

use anyhow::Context as _;

/// Starts `cmd run --config <config>`; `exec`, so the pid measured is the command's own.
pub(super) fn spawn(cmd: &str, config: &Path, dir: &Path) -> anyhow::Result<std::process::Child> {
    python_rules_module(dir)?;
    let path = std::env::var("PYTHONPATH").map_or_else(
        |_| dir.display().to_string(),
        |p| format!("{}:{p}", dir.display()),
    );
    std::process::Command::new("sh")
        .args([
            "-c",
            &format!("exec {cmd} \"$@\""),
            "bench",
            "run",
            "--config",
        ])
        .arg(config)
        .env("PYTHONPATH", path)
        .spawn()
        .with_context(|| format!("starting {cmd}"))
}

/// The SPEC's rules as a Python module `harness` with `RULES[topic][outcome] =
/// (annotation, [reasons])`, which the Python peers import: written from this service's
/// own default rules, so both sides apply the same table.
fn python_rules_module(dir: &std::path::Path) -> anyhow::Result<()> {
    use crate::domain::rules::{OutcomeTopic, Rules};
    let rules = Rules::default();
    let mut text = String::from(
        "# Written by `recaptcha-annotator bench` from its default rules.\nRULES = {\n",
    );
    for topic in OutcomeTopic::ALL {
        text.push_str(&format!("    {:?}: {{\n", topic.as_str()));
        for (t, outcome) in rules.outcomes() {
            if t != topic {
                continue;
            }
            let Some(rule) = rules.get(t, outcome) else {
                continue;
            };
            let annotation = rule
                .annotation
                .map_or_else(|| "None".to_owned(), |a| format!("{:?}", a.as_str()));
            let reasons: Vec<String> = rule
                .reasons
                .iter()
                .map(|r| format!("{:?}", r.as_str()))
                .collect();
            text.push_str(&format!(
                "        {outcome:?}: ({annotation}, [{}]),\n",
                reasons.join(", ")
            ));
        }
        text.push_str("    },\n");
    }
    text.push_str("}\n");
    std::fs::write(dir.join("harness.py"), text)?;
    Ok(())
}
