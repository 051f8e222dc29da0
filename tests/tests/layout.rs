//! The shape of the code, checked: in the `peer` and `directory` crates, modules form a graph
//! without cycles (each depends only on those below it), and every module file opens with
//! `//!` docs that say its job. A new `use crate::…` that closes a cycle fails here, naming it.

use anyhow::{bail, Context, Result};
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Top-level module name → the top-level modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first identifier of `s`.
fn ident(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The top-level modules `code` names after `crate::`, including each item of a
/// `crate::{a::…, b, …}` group.
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        if let Some(name) = ident(&group[i..]) {
                            found.insert(name.to_string());
                        }
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else if let Some(name) = ident(rest) {
            found.insert(name.to_string());
        }
    }
    found
}

/// The module graph of one crate, and its module files that do not open with `//!`.
fn graph(krate: &str) -> Result<(Graph, Vec<String>)> {
    let src = crate_src(krate);
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    let mut graph = Graph::new();
    let mut undocumented = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src)?.to_string_lossy().into_owned();
        let text = fs::read_to_string(&file)?;
        if !text.starts_with("//!") {
            undocumented.push(format!("{krate}/src/{relative}"));
        }
        let top = relative
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let mut used = uses(&code(&text));
        used.remove(&top);
        graph.entry(top).or_default().extend(used);
    }
    Ok((graph, undocumented))
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if graph.contains_key(next) {
                if let Some(found) = visit(graph, next, path, done) {
                    return Some(found);
                }
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

fn check(krate: &str) -> Result<()> {
    let (graph, undocumented) = graph(krate)?;
    if graph.len() < 5 {
        bail!(
            "{krate}: found only {} modules; is the path right?",
            graph.len()
        );
    }
    if let Some(cycle) = cycle(&graph) {
        let listing: Vec<String> = graph
            .iter()
            .map(|(m, uses)| {
                format!(
                    "  {m} -> {}",
                    Vec::from_iter(uses.iter().cloned()).join(", ")
                )
            })
            .collect();
        bail!(
            "{krate}: the modules {} import each other in a cycle\n{}",
            cycle.join(" -> "),
            listing.join("\n")
        );
    }
    if !undocumented.is_empty() {
        bail!(
            "module files without `//!` docs: {}",
            undocumented.join(", ")
        );
    }
    Ok(())
}

#[test]
fn peer_modules_form_a_graph_without_cycles() -> Result<()> {
    check("peer")
}

#[test]
fn directory_modules_form_a_graph_without_cycles() -> Result<()> {
    check("directory")
}

#[test]
fn the_checker_sees_groups_and_finds_cycles() -> Result<()> {
    let code = "use crate::{a::{X, Y}, b, c::Z};\nfn f() { crate::d::g(); }";
    assert_eq!(
        Vec::from_iter(uses(code)),
        ["a", "b", "c", "d"].map(String::from)
    );
    let mut graph = Graph::new();
    graph.insert("a".into(), ["b".into()].into());
    graph.insert("b".into(), ["c".into()].into());
    graph.insert("c".into(), BTreeSet::new());
    assert_eq!(cycle(&graph), None);
    graph.insert("c".into(), ["a".into()].into());
    assert_eq!(
        cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    Ok(())
}
