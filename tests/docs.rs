//! The documentation keeps up with the code: README's test command is the one CI runs. (That
//! README's exit-code table is the program's is checked beside the table, in `src/cli/exit.rs`.)

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn ci_runs_the_test_command_the_readme_gives() {
    let readme = read("README.md");
    let section = &readme[readme.find("## Running the tests").expect("the section")..];
    let block = &section[section.find("```sh\n").expect("a shell block") + 6..];
    let command = block.lines().next().unwrap().trim();
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|line| line.trim() == command),
        "{command:?} is not in .ci/run"
    );
}
