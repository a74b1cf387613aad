"""The origin adapter: the Lambda function URL CloudFront forwards cache misses to."""
