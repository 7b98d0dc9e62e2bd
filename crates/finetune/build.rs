//! Makes the libpython that is loaded at run time the one PyO3 linked
//! against at build time: an rpath to its folder on this crate's tests and
//! binaries. Which Python that is: `PYO3_PYTHON` if set (the training venv's
//! interpreter, for example), else `python3` on the PATH; it must be CPython
//! 3.11 built with a shared libpython (see README.md, "Building").

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
