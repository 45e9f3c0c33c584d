//! The `pensive` command-line tool (native only).

fn main() {}
