//! Amazon Resource Names of Petrel's objects, as the AWS Lambda surfaces show them: the
//! Runtime API's `Lambda-Runtime-Invoked-Function-Arn`, destination records, and the Lambda
//! API's `FunctionArn` and `AliasArn`. One builder, so that every surface names a function alike.

/// The region every ARN and every instance's `AWS_REGION` names.
pub const REGION: &str = "us-east-1";
/// The account every ARN names.
pub const ACCOUNT: &str = "000000000000";

/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`, with `:QUALIFIER` (a version, an alias or
/// `$LATEST`) when given.
pub fn function(name: &str, qualifier: Option<&str>) -> String {
    match qualifier {
        Some(q) => format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}:{q}"),
        None => format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"),
    }
}

/// The EventBridge rule a cron trigger's scheduled event names as its resource:
/// `arn:aws:events:REGION:ACCOUNT:rule/RULE`.
pub fn schedule_rule(rule: &str) -> String {
    format!("arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}")
}

/// The role a function's configuration names (Petrel has no IAM: one placeholder role).
pub fn role() -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/petrel")
}

/// The function name inside a function ARN (with its qualifier, if any: `name:qualifier`);
/// `None` when `s` is not a Lambda function ARN.
pub fn function_name(s: &str) -> Option<&str> {
    s.strip_prefix("arn:aws:lambda:")
        .and_then(|rest| rest.split_once(":function:"))
        .map(|(_, f)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_arns_build_and_read_back() {
        let a = function("hello", Some("3"));
        assert_eq!(a, "arn:aws:lambda:us-east-1:000000000000:function:hello:3");
        assert_eq!(function_name(&a), Some("hello:3"));
        assert_eq!(function_name(&function("hello", None)), Some("hello"));
        assert_eq!(function_name("hello"), None);
    }
}
