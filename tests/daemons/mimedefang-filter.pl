# The MIMEDefang filter of tests/daemons.rs: every message gets a header; a message whose
# Subject contains "forbidden" is rejected with a reply of our own.

sub filter_begin {
    my ($entity) = @_;
    if ($Subject =~ /forbidden/i) {
        action_bounce("Forbidden keyword in Subject", "554", "5.7.1");
    }
}

sub filter_end {
    my ($entity) = @_;
    action_add_header("X-Defang-Test", "checked");
}

1;
