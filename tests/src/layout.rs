//! The import graph of the workspace's crates, read from their sources: which
//! module (file) uses which, and which folder uses which. `tests/layout.rs`
//! holds it to two rules: no cycle anywhere, and the gateway's layers import
//! only the layers beneath them.
//!
//! What counts as a use: a path through `crate::`, `super::`, `self::` or a
//! child module's name, in a `use` tree or in code (comments and test
//! modules left out: a test may reach across layers). `mod x;` declares, it
//! does not use. Each path goes to the deepest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module: its path from the crate root (`[]` is the root).
pub type Module = Vec<String>;

/// One crate's modules and the uses between them.
#[derive(Debug, Default)]
pub struct Graph {
    /// Module → the file it is in, relative to the crate's `src`.
    pub files: BTreeMap<Module, PathBuf>,
    /// Module → the modules it uses (never itself).
    pub uses: BTreeMap<Module, BTreeSet<Module>>,
}

impl Graph {
    /// The graph of the library (or binary) rooted at `src/lib.rs` or
    /// `src/main.rs`; `src/bin` (other crates) is left out.
    pub fn of_crate(src: &Path) -> std::io::Result<Self> {
        let mut graph = Graph::default();
        let mut files = Vec::new();
        collect(src, src, &mut files)?;
        let has_lib = src.join("lib.rs").exists();
        for rel in &files {
            if rel.starts_with("bin") || (has_lib && rel == Path::new("main.rs")) {
                continue;
            }
            if rel.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            graph.files.insert(module_of(rel), rel.clone());
        }
        let modules: BTreeSet<Module> = graph.files.keys().cloned().collect();
        for (module, rel) in &graph.files {
            let text = fs::read_to_string(src.join(rel))?;
            let code = strip(&text);
            let mut targets = BTreeSet::new();
            for path in paths(&code, module, &modules) {
                if let Some(target) = deepest(&path, &modules)
                    && &target != module
                {
                    targets.insert(target);
                }
            }
            graph.uses.insert(module.clone(), targets);
        }
        Ok(graph)
    }

    /// The same uses between folders: a module counts as its first segment
    /// (`route::balance` → `route`; the root is `crate`); uses within a
    /// folder are dropped.
    pub fn folders(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, tos) in &self.uses {
            let f = folder(from);
            let entry = out.entry(f.clone()).or_default();
            for to in tos {
                let t = folder(to);
                if t != f {
                    entry.insert(t);
                }
            }
        }
        out
    }

    /// Every cycle between modules, each as the modules around it.
    pub fn module_cycles(&self) -> Vec<Vec<String>> {
        let named: BTreeMap<String, BTreeSet<String>> = self
            .uses
            .iter()
            .map(|(k, v)| (name(k), v.iter().map(name).collect()))
            .collect();
        cycles(&named)
    }
}

/// `route::balance`, or `crate` for the root.
pub fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

fn folder(module: &Module) -> String {
    module.first().cloned().unwrap_or_else(|| "crate".into())
}

/// The strongly connected components with more than one node (Tarjan), each
/// sorted: the cycles of a graph.
pub fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(next) = s.graph.get(v) {
            for w in next {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(lw));
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(iw));
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(())
}

fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

/// The code without comments, string literals' contents, and
/// `#[cfg(test)]` items.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to its closing brace (or `;`).
            let mut depth = 0i32;
            let mut opened = false;
            for next in lines.by_ref() {
                let code = next.split("//").next().unwrap_or("");
                for c in code.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' && prev != '\'' {
                in_str = !in_str;
                out.push('"');
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module path in `code`, made absolute from `module`.
fn paths(code: &str, module: &Module, modules: &BTreeSet<Module>) -> Vec<Module> {
    let children: BTreeSet<&str> = modules
        .iter()
        .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
        .filter_map(|m| m.last().map(String::as_str))
        .collect();
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let followed = chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':');
        let base: Option<Module> = match word.as_str() {
            "crate" => Some(Vec::new()),
            "self" => Some(module.clone()),
            "super" => Some(module[..module.len().saturating_sub(1)].to_vec()),
            w if children.contains(w) => Some([module.clone(), vec![w.to_string()]].concat()),
            _ => None,
        };
        let Some(mut base) = base else { continue };
        if !followed {
            continue;
        }
        i += 2;
        // `super::super::`
        while chars[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
            base.pop();
            i += 7;
        }
        i = tree(&chars, i, base, &mut out);
    }
    out
}

/// Reads a path (or a `{…}` tree of them) at `i` under `prefix`.
fn tree(chars: &[char], mut i: usize, mut prefix: Module, out: &mut Vec<Module>) -> usize {
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if chars.get(i) == Some(&'{') {
            i += 1;
            loop {
                i = tree(chars, i, prefix.clone(), out);
                while i < chars.len() && chars[i].is_whitespace() {
                    i += 1;
                }
                match chars.get(i) {
                    Some(',') => i += 1,
                    Some('}') => return i + 1,
                    _ => return i,
                }
                while i < chars.len() && chars[i].is_whitespace() {
                    i += 1;
                }
                if chars.get(i) == Some(&'}') {
                    return i + 1;
                }
            }
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let seg: String = chars[start..i].iter().collect();
        if seg.is_empty() || seg == "self" {
            out.push(prefix);
            return i;
        }
        prefix.push(seg);
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            out.push(prefix);
            return i;
        }
    }
}

/// The deepest module `path` names.
fn deepest(path: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ms: &[&str]) -> BTreeSet<Module> {
        ms.iter()
            .map(|m| {
                if m.is_empty() {
                    Vec::new()
                } else {
                    m.split("::").map(String::from).collect()
                }
            })
            .collect()
    }

    #[test]
    fn reads_use_trees_relative_paths_and_code_paths() {
        let modules = set(&["", "a", "a::x", "b", "c", "d"]);
        let here: Module = vec!["a".into()];
        let code = strip(
            "use crate::{b::Thing, c::{self, Other}};\n\
             use x::Y; // crate::d in a comment\n\
             let s = \"crate::d\";\n\
             fn f() { super::d::g(); }\n\
             #[cfg(test)]\nmod tests {\n    use crate::d;\n}\n",
        );
        let mut got: Vec<String> = paths(&code, &here, &modules)
            .into_iter()
            .filter_map(|p| deepest(&p, &modules))
            .map(|m| name(&m))
            .collect();
        got.sort();
        got.dedup();
        assert_eq!(got, ["a::x", "b", "c", "d"]);
    }

    #[test]
    fn finds_cycles_and_only_cycles() {
        let g: BTreeMap<String, BTreeSet<String>> = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec!["a"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
        let acyclic: BTreeMap<String, BTreeSet<String>> =
            [("a".to_string(), ["b".to_string()].into())].into();
        assert!(cycles(&acyclic).is_empty());
    }
}
