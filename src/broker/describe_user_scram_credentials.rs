//! DescribeUserScramCredentials: each user's SCRAM mechanisms and rounds (never a key), for
//! `kafka-configs --describe --entity-type users` and admin clients. Users of
//! `--sasl-users` are listed with those set through AlterUserScramCredentials.

use std::collections::HashSet;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use super::{str_bytes, Broker};

pub fn handle(
    broker: &Broker,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let described = broker.scram.describe(broker.config.sasl_users.as_ref());
    let result = |user: &str, infos: &[(i8, i32)]| {
        let mut result = DescribeUserScramCredentialsResult::default();
        result.user = str_bytes(user);
        result.credential_infos = infos
            .iter()
            .map(|&(mechanism, iterations)| {
                let mut info = CredentialInfo::default();
                info.mechanism = mechanism;
                info.iterations = iterations;
                info
            })
            .collect();
        result
    };
    let failed = |user: &str, error: ResponseError, message: String| {
        let mut result = DescribeUserScramCredentialsResult::default();
        result.user = str_bytes(user);
        result.error_code = error.code();
        result.error_message = Some(str_bytes(&message));
        result
    };
    let mut response = DescribeUserScramCredentialsResponse::default();
    response.results = match request.users.filter(|users| !users.is_empty()) {
        // No names: every user with a credential, as Kafka.
        None => described
            .iter()
            .map(|(user, infos)| result(user, infos))
            .collect(),
        Some(users) => {
            let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
            let mut seen = HashSet::new();
            let repeated: HashSet<&str> =
                names.iter().copied().filter(|n| !seen.insert(*n)).collect();
            let mut answered = HashSet::new();
            names
                .into_iter()
                .filter(|name| answered.insert(*name))
                .map(|name| match described.get(name) {
                    _ if repeated.contains(name) => failed(
                        name,
                        ResponseError::DuplicateResource,
                        format!("Cannot describe SCRAM credentials for the same user twice in a single request: {name}"),
                    ),
                    Some(infos) => result(name, infos),
                    None => failed(
                        name,
                        ResponseError::ResourceNotFound,
                        format!("Attempt to describe a user credential that does not exist: {name}"),
                    ),
                })
                .collect()
        }
    };
    response
}
