//! Compile tests of `#[derive(Presence)]` and its attribute spelling `#[presence(...)]`: what
//! users see when they get them right and wrong (one error per mistake, at its token).
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p presence-tests --test
//! ui` and review the diff.

#[rustversion::attr(not(stable), ignore)]
#[cfg_attr(miri, ignore)]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
