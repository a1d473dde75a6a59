use super::*;

#[test]
fn scratch() {
    let config = portcullis_sdk::parse_config::<Redact>("{}").unwrap();
    for s in [
        "mail alice@example.com now",
        "card 4111 1111 1111 1111 and 4111 1111 1111 1112",
        "aws AKIAIOSFODNN7EXAMPLE and aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "ssn 078-05-1120 ip 192.168.1.20 bad 999.1.1.1 v6 2001:db8::8a2e:370:7334 time 12:30:45",
        "call +1 415 555 2671 or (415) 555-2671 or 020 7946 0958, date 03.04.2024 10:30",
        "iban DE89 3704 0044 0532 0130 00 EUR and GB82WEST12345698765432",
        "password=hunter2 and {\"api_key\": \"abc def\"} token: xyz max_tokens=100",
        "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB glpat-abcdefghij0123456789 xoxb-1234567890-abcdefghij sk_live_abcdefghij0123456789",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.abc_def",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc+/=\n-----END RSA PRIVATE KEY-----\nbye",
    ] {
        let mut scan = Scanner::new(&config);
        println!("{s}\n => {:?}\n    {:?}", scan.string(s), scan.summary());
    }
}
