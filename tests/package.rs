//! How a package's accepted batch sizes are learned from its own input check, and how a batch is
//! split and padded to them.

use _core::package::BatchSizes;

#[test]
fn passes_split_and_pad() {
    let any = BatchSizes::default();
    assert_eq!(any.passes(5), vec![(0, 5, 5)]);
    let exact = BatchSizes {
        min: 4,
        max: Some(4),
    };
    assert_eq!(exact.passes(9), vec![(0, 4, 4), (4, 4, 4), (8, 1, 4)]);
    let from_two = BatchSizes { min: 2, max: None };
    assert_eq!(from_two.passes(1), vec![(0, 1, 2)]);
}

#[test]
fn learns_from_the_package_input_check() {
    let mut sizes = BatchSizes::default();
    assert!(sizes.learn(
        "input_handles[0]: dim value is too small at 0, expected it to be >= 2, but got: 1\n"
    ));
    assert_eq!(sizes, BatchSizes { min: 2, max: None });
    assert!(sizes.learn(
        "input_handles[0]: dim value is too large at 0, expected to be <= 64, but got: 100"
    ));
    assert_eq!(
        sizes,
        BatchSizes {
            min: 2,
            max: Some(64)
        }
    );
    assert!(!sizes.learn("input_handles[0]: unmatched dim value at 2, expected: 224"));
    assert!(!sizes.learn("some other failure"));
    let mut exact = BatchSizes::default();
    assert!(exact.learn("input_handles[0]: unmatched dim value at 0, expected: 8, but got: 3"));
    assert_eq!(
        exact,
        BatchSizes {
            min: 8,
            max: Some(8)
        }
    );
}
