//! The command line as a person meets it: every command's help and its error cases, as
//! `trycmd` cases in `tests/cmd/` (a `.toml` with the arguments, `.stdout`/`.stderr` with
//! what is printed; `TRYCMD=overwrite cargo test --test suite cli::` rewrites them after a
//! deliberate change). Cases that need the broker, Redis or a sandbox are in
//! `tests/suite/operations.rs`.

#[test]
fn cli_cases() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}
