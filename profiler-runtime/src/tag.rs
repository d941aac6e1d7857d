//! Tags name profiles and their files, so they must be safe file names.
//!
//! A safe tag matches `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`. The attribute rejects other tags at
//! compile time; at run time (`spawn`, `run`, `enter` with a dynamic tag) they are sanitised:
//! every other character becomes `_`, leading characters that are not letters or digits are
//! dropped, the result is cut to 64 characters, and an empty result becomes `untagged`.
//! No tag can therefore name a path outside the output directory (`/`, `..` and NUL never
//! survive), nor the merged file `_merged`.

/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// Tag used when sanitising leaves nothing.
pub const UNTAGGED: &str = "untagged";

fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Whether `tag` is already a safe file name.
pub fn is_safe(tag: &str) -> bool {
    tag.len() <= MAX_TAG_LEN
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric())
        && tag.chars().all(is_tag_char)
}

/// The safe form of `tag` (itself when it is already safe).
pub fn sanitize(tag: &str) -> String {
    let mapped: String = tag
        .chars()
        .map(|c| if is_tag_char(c) { c } else { '_' })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(MAX_TAG_LEN)
        .collect();
    if mapped.is_empty() {
        UNTAGGED.to_owned()
    } else {
        mapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_tags_are_kept() {
        for t in ["ip_manager", "worker-3", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(is_safe(t), "{t}");
            assert_eq!(sanitize(t), t);
        }
    }

    #[test]
    fn hostile_tags_become_plain_file_names() {
        let long = "y".repeat(10_000);
        let cases = [
            ("../../etc/passwd", "etc_passwd"),
            ("/abs", "abs"),
            ("a/b", "a_b"),
            ("..", UNTAGGED),
            ("", UNTAGGED),
            ("nul\0byte", "nul_byte"),
            ("_merged", "merged"),
            ("ünïcødé", "n_c_d_"),
            (long.as_str(), &long[..64]),
        ];
        for (raw, want) in cases {
            let got = sanitize(raw);
            assert_eq!(got, want, "{raw:?}");
            assert!(is_safe(&got), "{got:?}");
        }
    }
}
