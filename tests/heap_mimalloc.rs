//! Heap profiles with `threadprof::Allocator` around mimalloc: the accuracy case of
//! tests/heap.rs with another inner allocator.
#![cfg(all(feature = "enabled", feature = "heap", target_os = "linux"))]

mod common;
mod heap_cases;

#[global_allocator]
static ALLOC: threadprof::Allocator<mimalloc::MiMalloc> =
    threadprof::Allocator::new(mimalloc::MiMalloc);

#[test]
fn child_accuracy_mimalloc() {
    if std::env::var_os(common::CHILD).is_some() {
        heap_cases::child_accuracy();
    }
}

#[test]
fn alloc_and_inuse_space_per_tag_match_the_truth_around_mimalloc() {
    heap_cases::check_accuracy("child_accuracy_mimalloc");
}
