//! Softmax and top-k, and label files.

use _core::classify::{read_labels, top_classes};
use _core::Error;

#[test]
fn top_classes_is_softmax_sorted() {
    let classes = top_classes(&[1.0, 3.0, 2.0, 3.0], 3);
    let indices: Vec<usize> = classes.iter().map(|c| c.index).collect();
    assert_eq!(indices, vec![1, 3, 2]);
    let denominator = 1f64.exp() + 2.0 * 3f64.exp() + 2f64.exp();
    let expected = (3f64.exp() / denominator) as f32;
    assert!((classes[0].probability - expected).abs() < 1e-6);
    assert_eq!(top_classes(&[0.0, 1.0], 10).len(), 2);
    let total: f32 = top_classes(&[5.0, -1.0, 0.5], 3)
        .iter()
        .map(|c| c.probability)
        .sum();
    assert!((total - 1.0).abs() < 1e-6);
}

#[test]
fn softmax_is_stable_for_large_logits() {
    let classes = top_classes(&[1000.0, 999.0, -1000.0], 2);
    assert_eq!(classes[0].index, 0);
    let expected = (1.0 / (1.0 + (-1f64).exp())) as f32;
    assert!((classes[0].probability - expected).abs() < 1e-6);
}

#[test]
fn ranking_follows_logits_whose_probabilities_round_equal() {
    // An untrained network's logits are ~1e-9 apart: every f32 probability is 1/n, but the
    // ranking must still be the logits' (torch's argmax).
    let logits = [1e-9_f32, -2e-9, 3e-9, 2e-9];
    let classes = top_classes(&logits, 4);
    assert!(classes
        .iter()
        .all(|c| c.probability == classes[0].probability));
    let indices: Vec<usize> = classes.iter().map(|c| c.index).collect();
    assert_eq!(indices, vec![2, 3, 0, 1]);
}

#[test]
fn labels_file_one_name_per_line() {
    let dir = std::env::temp_dir().join(format!("bmf-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("labels.txt");
    std::fs::write(&path, "tench\r\ngoldfish\ngreat white shark\n").unwrap();
    assert_eq!(
        read_labels(&path).unwrap(),
        vec!["tench", "goldfish", "great white shark"]
    );
    let missing = read_labels(&dir.join("missing.txt")).unwrap_err();
    assert!(matches!(
        missing,
        Error::NotFound {
            what: "labels file",
            ..
        }
    ));
    assert!(missing.to_string().contains("labels file not found"));
}
