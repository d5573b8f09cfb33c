"""cdrflow: telephony call-status callbacks, from HTTP to PostgreSQL and RabbitMQ."""
