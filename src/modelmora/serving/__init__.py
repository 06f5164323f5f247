"""The model server: configuration, durable jobs, metrics, the scheduler and the HTTP front end."""
