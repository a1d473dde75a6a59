module portcullis.dev/policy

go 1.24
