//! The choice of the forward pass size among the candidates, with made-up timings.

use std::time::Duration;

use _core::pass_size::{Chooser, PassSize, WARM_UP};

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// Runs passes through `chooser` as a classifier would, with `cost(size)` ms per image,
/// until it chooses; returns the sizes asked for, in order.
fn run_until_chosen(chooser: &Chooser, cost: impl Fn(usize) -> u64) -> Vec<usize> {
    let mut asked = Vec::new();
    while chooser.chosen().is_none() {
        let size = chooser.next();
        asked.push(size);
        chooser.record(size, size, ms(cost(size) * size as u64));
        assert!(asked.len() < 100, "no choice after {asked:?}");
    }
    asked
}

#[test]
fn tries_each_candidate_in_abba_order_then_keeps_the_fastest() {
    let chooser = Chooser::new();
    let asked = run_until_chosen(&chooser, |size| if size == 4 { 10 } else { 15 });
    assert_eq!(asked, [4, 8, 8, 4, 4, 8, 8, 4, 4, 8]);
    assert_eq!(chooser.chosen(), Some(4));
    assert_eq!(chooser.next(), 4);
}

#[test]
fn keeps_the_larger_size_when_it_is_faster() {
    let chooser = Chooser::new();
    run_until_chosen(&chooser, |size| if size == 4 { 15 } else { 10 });
    assert_eq!(chooser.chosen(), Some(8));
}

#[test]
fn warm_up_passes_do_not_count() {
    // Very slow first passes of 4 (profiling runs) must not decide against it.
    let chooser = Chooser::new();
    let mut fours = 0;
    while chooser.chosen().is_none() {
        let size = chooser.next();
        let per_image = if size == 4 {
            fours += 1;
            if fours <= WARM_UP {
                1000
            } else {
                10
            }
        } else {
            15
        };
        chooser.record(size, size, ms(per_image * size as u64));
    }
    assert_eq!(chooser.chosen(), Some(4));
}

#[test]
fn short_passes_and_other_sizes_are_not_counted() {
    let chooser = Chooser::new();
    chooser.record(4, 3, ms(1));
    chooser.record(5, 5, ms(1));
    // Nothing counted: the first pass asked for is still the first of the A B B A order.
    assert_eq!(chooser.next(), 4);
    chooser.record(4, 4, ms(40));
    assert_eq!(chooser.next(), 8);
}

#[test]
fn a_fixed_size_is_always_itself_and_whole_is_the_rest_of_the_batch() {
    let fixed = PassSize::Fixed(6);
    assert_eq!((fixed.next(32), fixed.current()), (6, Some(6)));
    let whole = PassSize::Whole;
    assert_eq!((whole.next(32), whole.current()), (32, None));
    let auto = PassSize::Auto(Chooser::new());
    assert_eq!((auto.next(32), auto.current()), (4, None));
}
