"""The API's routes, one router per area; `create_app` puts them together."""
