//! Tab completion helpers: the path after `/file`, completed from what is on disk as a shell
//! does, and the common start of several candidates.

use std::path::PathBuf;

/// Most entries of a folder looked at for one Tab (a huge folder is not read whole).
const LOOKED_AT: usize = 5_000;
/// Most names listed when several match.
const LISTED: usize = 40;

/// What Tab does to a path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// The path, completed (a folder ends with `/`).
    Path(String),
    /// Several names match, with nothing more in common: these (folders end with `/`).
    Names(Vec<String>),
    /// Nothing matches.
    Nothing,
}

/// Completes `typed`, a path as the user typed it (`~/` is the home folder; a relative path
/// is from the current folder). Hidden names are offered only for a name typed with its dot.
pub(crate) fn complete(typed: &str) -> Completion {
    let (folder_typed, prefix) = match typed.rfind('/') {
        Some(i) => typed.split_at(i + 1),
        None => ("", typed),
    };
    let folder = match (folder_typed.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ if folder_typed.is_empty() => PathBuf::from("."),
        _ => PathBuf::from(folder_typed),
    };
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Completion::Nothing;
    };
    let mut names: Vec<String> = entries
        .take(LOOKED_AT)
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let wanted =
                name.starts_with(prefix) && (prefix.starts_with('.') || !name.starts_with('.'));
            // A link to a folder counts as a folder (metadata follows links).
            let folder = std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir());
            wanted.then(|| if folder { format!("{name}/") } else { name })
        })
        .collect();
    names.sort();
    match names.as_slice() {
        [] => Completion::Nothing,
        [one] => Completion::Path(format!("{folder_typed}{one}")),
        many => {
            let common = common_prefix(many);
            if common.len() > prefix.len() {
                Completion::Path(format!("{folder_typed}{common}"))
            } else {
                names.truncate(LISTED);
                Completion::Names(names)
            }
        }
    }
}

/// The longest start the words share, on character boundaries (Tab's completion of a
/// command, a name or a path).
pub(crate) fn common_prefix(words: &[impl AsRef<str>]) -> String {
    let Some(first) = words.first() else {
        return String::new();
    };
    let mut prefix = first.as_ref().to_string();
    for w in &words[1..] {
        while !w.as_ref().starts_with(&prefix) {
            prefix.pop();
        }
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_names_and_folders_and_lists_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_string_lossy().into_owned();
        std::fs::write(dir.path().join("report.pdf"), b"").expect("write");
        std::fs::write(dir.path().join("résumé one.txt"), b"").expect("write");
        std::fs::write(dir.path().join("résumé two.txt"), b"").expect("write");
        std::fs::write(dir.path().join(".hidden"), b"").expect("write");
        std::fs::create_dir(dir.path().join("photos")).expect("mkdir");

        assert_eq!(
            complete(&format!("{root}/rep")),
            Completion::Path(format!("{root}/report.pdf"))
        );
        assert_eq!(
            complete(&format!("{root}/ph")),
            Completion::Path(format!("{root}/photos/"))
        );
        // Spaces and accents: the common start, then the two names.
        assert_eq!(
            complete(&format!("{root}/ré")),
            Completion::Path(format!("{root}/résumé "))
        );
        assert_eq!(
            complete(&format!("{root}/résumé ")),
            Completion::Names(vec!["résumé one.txt".into(), "résumé two.txt".into()])
        );
        assert_eq!(complete(&format!("{root}/x")), Completion::Nothing);
        assert_eq!(
            complete(&format!("{root}/.h")),
            Completion::Path(format!("{root}/.hidden"))
        );
        match complete(&format!("{root}/")) {
            Completion::Names(names) => {
                assert!(!names.contains(&".hidden".to_string()), "{names:?}")
            }
            other => panic!("expected the names, got {other:?}"),
        }
        assert_eq!(complete("/no/such/folder/x"), Completion::Nothing);
    }
}
