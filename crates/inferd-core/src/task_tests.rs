//! Decoding, preprocessing and encoding of the two tasks.

use super::*;
use serde_json::json;

fn forecast() -> Task {
    Task::Forecast {
        window: 3,
        features: vec!["a".into(), "b".into()],
        targets: vec!["a".into()],
        output: "y".into(),
        fill: None,
    }
}

#[test]
fn forecast_errors_name_the_field() {
    let t = forecast();
    let ok = json!([[1, 2], [3, 4], [5, 6]]);
    assert!(t.decode(std::slice::from_ref(&ok)).is_ok());
    let e = t
        .decode(&[ok.clone(), json!([[1, 2], [3, 4]])])
        .unwrap_err();
    assert_eq!(e.field, "instances[1]");
    assert!(e.message.contains("expected 3 rows"));
    let e = t.decode(&[json!([[1, 2], [3], [5, 6]])]).unwrap_err();
    assert_eq!(e.field, "instances[0][1]");
    let e = t.decode(&[json!([[1, 2], [3, "x"], [5, 6]])]).unwrap_err();
    assert_eq!(e.field, "instances[0][1][1]");
    let e = t
        .decode(&[json!([[1, 2], [3, 1e300], [5, 6]])])
        .unwrap_err();
    assert!(e.message.contains("float32"), "{}", e.message);
}

#[test]
fn text_limits() {
    let t = Task::TextClassification {
        labels: vec!["ham".into(), "spam".into()],
        max_text_bytes: 4,
        output: "p".into(),
        email: None,
    };
    assert!(t.decode(&[json!("abcd")]).is_ok());
    assert_eq!(
        t.decode(&[json!("abcde")]).unwrap_err().field,
        "instances[0]"
    );
    assert!(t
        .decode(&[json!("a\u{0}")])
        .unwrap_err()
        .message
        .contains("NUL"));
    assert!(t
        .decode(&[json!(5)])
        .unwrap_err()
        .message
        .contains("a number"));
    let out = OutputBatch {
        rows: 1,
        cols: 2,
        data: vec![0.25, 0.75],
    };
    assert_eq!(
        serde_json::to_value(t.encode(&out)).unwrap(),
        json!([{"label": "spam", "scores": {"ham": 0.25, "spam": 0.75}}])
    );
}

fn filling() -> Task {
    Task::Forecast {
        window: 4,
        features: vec!["a".into()],
        targets: vec!["a".into()],
        output: "y".into(),
        fill: Some(2),
    }
}

fn windows(d: &Decoded) -> Vec<f32> {
    match &d.batch {
        InputBatch::Windows { data, .. } => data.clone(),
        _ => panic!("windows"),
    }
}

#[test]
fn nulls_are_filled_up_to_the_limit_and_counted() {
    let t = filling();
    let d = t
        .decode(&[json!([[1], [null], [3], [4]]), json!([[1], [2], [3], [4]])])
        .unwrap();
    assert_eq!(windows(&d), vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(d.filled, Some(vec![1, 0]));
    let e = t
        .decode(&[json!([[null], [null], [null], [4]])])
        .unwrap_err();
    assert_eq!(e.field, "instances[0]");
    assert!(e.message.contains("at most 2"), "{}", e.message);
    // A model that does not fill refuses a null, naming the value.
    let e = forecast()
        .decode(&[json!([[1, 2], [null, 4], [5, 6]])])
        .unwrap_err();
    assert_eq!(e.field, "instances[0][1][0]");
    assert_eq!(
        forecast()
            .decode(&[json!([[1, 2], [3, 4], [5, 6]])])
            .unwrap()
            .filled,
        None
    );
}

#[test]
fn email_models_clean_and_refuse_only_by_raw_size() {
    let t = Task::TextClassification {
        labels: vec!["ham".into(), "spam".into()],
        max_text_bytes: 64,
        output: "p".into(),
        email: Some(10),
    };
    let d = t
        .decode(&[json!("Subject: hi\n\nlunch   at\u{0} noon, ok?")])
        .unwrap();
    let InputBatch::Text(texts) = d.batch else {
        panic!("text")
    };
    assert!(texts[0].chars().count() <= 10, "{texts:?}");
    assert!(!texts[0].contains('\0'));
    assert!(t.preprocesses());
    let e = t.decode(&[json!("x".repeat(65))]).unwrap_err();
    assert!(e.message.contains("message is 65 bytes"), "{}", e.message);
}
