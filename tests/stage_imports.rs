//! "A stage imports contracts, the runtime, stores and libraries, never
//! another stage" (ARCHITECTURE.md), checked on the source: every file under
//! `src/stages/<stage>/` is read and any path naming another stage fails the
//! test, with the file and line. What stages share belongs in
//! `src/contracts/` (records) or outside `src/stages/` (libraries); tests
//! that chain stages use `src/stages/fixtures.rs`.

use std::path::{Path, PathBuf};

/// The stages: the folders of `src/stages/`.
fn stages(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Whether `line` (code of stage `own`, in a file that is the stage's root
/// module when `is_root`) names stage `other` by a path: `stages::other`,
/// `stages::{.., other, ..}`, or `super::other` from the stage's root
/// module / `super::super::other` from a file below it.
fn names_stage(line: &str, other: &str, is_root: bool) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let word_after = |prefix: &str| {
        compact.match_indices(prefix).any(|(i, _)| {
            let rest = &compact[i + prefix.len()..];
            rest.strip_prefix(other)
                .is_some_and(|r| !r.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
        })
    };
    let in_group = compact.match_indices("stages::{").any(|(i, _)| {
        let group = &compact[i + "stages::{".len()..];
        let group = &group[..group.find('}').unwrap_or(group.len())];
        group
            .split(',')
            .any(|item| item == other || item.starts_with(&format!("{other}::")))
    });
    let relative = if is_root {
        word_after("super::")
    } else {
        word_after("super::super::")
    };
    word_after("stages::") || in_group || relative
}

fn violations(src_stages: &Path) -> Vec<String> {
    let names = stages(src_stages);
    let mut found = Vec::new();
    for own in &names {
        let mut files = Vec::new();
        rust_files(&src_stages.join(own), &mut files);
        files.sort();
        for file in files {
            let is_root = file.file_name().is_some_and(|n| n == "mod.rs")
                && file.parent() == Some(&src_stages.join(own));
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                for other in names.iter().filter(|o| *o != own) {
                    if names_stage(line, other, is_root) {
                        found.push(format!(
                            "{}:{}: stage {own} names stage {other}: {}",
                            file.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn no_stage_imports_another_stage() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/stages");
    let names = stages(&root);
    assert!(
        names.len() >= 5,
        "expected the five stage folders, found {names:?}"
    );
    let found = violations(&root);
    assert!(
        found.is_empty(),
        "a stage imports another stage (move the shared type to src/contracts/):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_each_form_of_import() {
    for line in [
        "use crate::stages::aggregate::ClosedWindow;",
        "use crate::stages::{aggregate, rate};",
        "use crate::stages::{aggregate::ClosedWindow};",
        "    let w = crate::stages::aggregate::GRACE_PERIOD_S;",
        "use crate :: stages :: aggregate;",
    ] {
        assert!(names_stage(line, "aggregate", false), "{line}");
    }
    assert!(names_stage("use super::aggregate;", "aggregate", true));
    assert!(names_stage(
        "use super::super::aggregate::X;",
        "aggregate",
        false
    ));
    for line in [
        "use crate::contracts::ClosedWindow;",
        "use crate::stages::fixtures::{config, rated};",
        "use crate::stages::aggregates_helper;",
        "// see crate::stages::aggregate for the windows",
        "use super::aggregate_all;",
    ] {
        assert!(!names_stage(line, "aggregate", false), "{line}");
    }
    // Below a stage's root, `super::x` is the stage's own module x.
    assert!(!names_stage("use super::aggregate;", "aggregate", false));
}

#[test]
fn an_added_import_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    for stage in ["post", "aggregate"] {
        std::fs::create_dir(dir.path().join(stage)).unwrap();
        std::fs::write(dir.path().join(stage).join("mod.rs"), "pub mod x;\n").unwrap();
    }
    assert!(violations(dir.path()).is_empty());
    std::fs::write(
        dir.path().join("post").join("x.rs"),
        "use crate::contracts::Posting;\nuse crate::stages::aggregate::ClosedWindow;\n",
    )
    .unwrap();
    let found = violations(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("x.rs:2: stage post names stage aggregate"));
}
